"""The Pipecat processors of one call: ``step_audio2`` (the speech-to-speech service and its
model-service client), ``turn_taking``, ``call_audio``, ``observers``, ``flows``. Imports only the
kernel (``stepcall``); ``bots`` assembles them into calls.
"""
