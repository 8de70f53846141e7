"""Browser calls: ``routes`` (the bot server's WebRTC routes), ``call`` (one browser call),
``config`` (ICE servers, offer checks, rate limit), ``transcript`` (the widget's live transcript),
``tokens`` (widget call tokens), ``static/`` (the widget).
"""
