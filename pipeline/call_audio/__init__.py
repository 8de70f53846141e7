"""The call's audio on its way through: ``caller_frame``, ``batcher`` (which caller frames go down
together), ``gate`` (only the caller's turns reach the model), ``echo_guard``,
``stale_audio_guard`` (nothing of an interrupted answer after a barge-in).
"""
