"""The bot server: ``cli`` (``stepcall``), ``server``, ``call`` (one call's pipeline and runner),
``profile`` / ``registry`` (the bots offered), ``twilio``, ``webrtc``, ``records``.
"""
