"""The ``ratelimit`` command: ``check``, ``inspect``, ``migrate`` and ``demo``."""
