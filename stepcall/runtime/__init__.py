"""Runtime plumbing of every server: ``realtime`` (heap freeze, GIL switch interval, 3.12
``wait_for``), ``logs`` (tokens masked in logs), ``tokens`` (constant-time checks, signing),
``metrics``.
"""
