"""The engine: counting against a backend, with the deny cache, the per-shard circuit
breakers and the failure policy. The sync and async paths share every step but the I/O.

Imports the core and the backends only; the user-facing ``Limiter`` builds on it.
"""
