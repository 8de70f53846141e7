"""The proving kit (``stepcall call|eval|load`` and the tests), never imported by product code:
``callers``, ``evals``, ``loadtest``, ``loopback_phone``, ``canned_model_service``,
``checkpoints``.
"""
