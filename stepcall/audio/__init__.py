"""Audio primitives: ``pcm``, ``mulaw``, ``resample``, ``silero``, ``smart_turn_features``,
``inference`` (the process-wide Silero and Smart Turn models), ``speech`` (offline synthesis).
"""
