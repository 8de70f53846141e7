"""The model service (GPU process): ``server``, ``sessions``, ``backends`` (reference, vllm, cpu),
``stepaudio2`` (the reference model), ``token2wav``, ``vllm_plugin``, ``turn_checks``,
``sampling``, ``metrics``. Imports only the kernel (``stepcall``).
"""
