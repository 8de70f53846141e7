"""Tiny checkpoints the tests and the demo build: Step-Audio 2 (``tiny_checkpoint``,
``tiny_tokenizer``, ``demo_checkpoint``) and token2wav (``tiny_token2wav``).
"""
