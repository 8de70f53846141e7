"""The Step-Audio 2 speech-to-speech service: ``service`` (the Pipecat service), ``client``
(its protocol-v1 client of the model service), ``apology`` (what a caller hears when it is gone).
"""
