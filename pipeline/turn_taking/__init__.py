"""When the caller's turn starts and ends: ``endpoint_vad`` (Silero VAD ending at the acoustic end of
speech, with ``speech_energy`` and ``vad_loudness``), ``min_duration_start`` (barge-in after real
speech), ``speculative_smart_turn`` (Smart Turn judged during the pause), ``shared_analyzers``
(Pipecat's analyzers on the process-wide models).
"""
