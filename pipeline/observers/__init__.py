"""Observers of a call: ``fan_out`` (one Pipecat observer for all of them), ``worker_proxy`` (a
worker's observer proxy that queues only what they look at), ``turn_metrics``.
"""
