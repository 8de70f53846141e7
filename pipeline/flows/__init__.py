"""YAML flows on a live call: ``format`` (the flow format: schema, checker, loader, model),
``tools`` (what flows call), ``runtime`` (a flow running on a call), ``call_control`` (hang-up and
transfer, implemented by each transport).
"""
