"""Config file internals: the accepted keys, the reader that turns a document into
settings and rules, and the rule builders. ``ratelimit.config`` is the public face.
"""
