"""The shared kernel: what every stepcall process may import (it imports none of ours).

``protocol`` (model-service protocol v1), ``settings`` (every ``STEPCALL_*`` variable),
``audio`` (PCM, mu-law, resampling, Silero, Smart Turn, speech synthesis), ``runtime`` (real-time
process tuning, log redaction, tokens, metrics).
"""
