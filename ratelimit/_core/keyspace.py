"""Counter key names: bounded, collision-free and cluster-friendly whatever the identity."""

from __future__ import annotations

import re
from base64 import urlsafe_b64encode
from functools import lru_cache
from hashlib import sha256

__all__ = ["Identity", "KeySpace", "glob_escape", "identity_tag"]

Identity = str | bytes

# Identities made only of these characters (and short) are used verbatim, which keeps
# keys readable in redis-cli. Everything else is hashed. The hashed form starts with
# '#', which a verbatim tag can never contain, so the two forms cannot collide; and
# neither form contains '{', '}', ':', glob characters, spaces or NUL.
_VERBATIM = re.compile(r"[A-Za-z0-9._@+=/-]{1,64}")
_VERBATIM_BYTES = re.compile(rb"[A-Za-z0-9._@+=/-]{1,64}")


@lru_cache(maxsize=16384)
def _tag_of_str(identity: str) -> str:
    if _VERBATIM.fullmatch(identity):
        return identity
    return _hashed(identity.encode("utf-8", "surrogatepass"))


def _hashed(raw: bytes) -> str:
    # 144 bits of SHA-256: collisions are not a practical concern.
    return "#" + urlsafe_b64encode(sha256(raw).digest()[:18]).decode("ascii")


def identity_tag(identity: Identity) -> str:
    """The key-safe tag for an identity; ``"alice"`` and ``b"alice"`` share one tag.

    >>> identity_tag("alice")
    'alice'
    >>> identity_tag("a{b}:c").startswith("#")
    True
    """
    if isinstance(identity, str):
        return _tag_of_str(identity)
    if isinstance(identity, (bytes, bytearray, memoryview)):
        raw = bytes(identity)
        if _VERBATIM_BYTES.fullmatch(raw):
            return raw.decode("ascii")
        return _hashed(raw)
    raise TypeError(f"an identity must be str or bytes, got {type(identity).__name__}: {identity!r}")


class KeySpace:
    """Names the Redis (and memory) keys of counters.

    A counter is identified by (identity, window): two limits with the same window on
    the same identity share one counter. Keys look like ``rl:{alice}:60000`` (prefix,
    identity tag in braces, window in milliseconds). The braces are a Redis Cluster
    hash tag: all of one identity's counters share a slot, so one identity's limits are
    always decided by one atomic script. With ``hash_tag`` set, every key uses that
    fixed tag instead (``rl:{app}:alice:60000``): all counters live in one slot, which
    makes every request atomic on a cluster at the price of putting the whole load on
    one node.
    """

    __slots__ = ("hash_tag", "prefix")

    def __init__(self, prefix: str = "rl", hash_tag: str | None = None) -> None:
        for name, value in (("prefix", prefix), ("hash_tag", hash_tag)):
            if value is not None and (not isinstance(value, str) or re.search(r"[{}\s\x00]", value)):
                raise ValueError(f"{name} must be a string without braces, spaces or NUL, got {value!r}")
        if hash_tag == "":
            raise ValueError("hash_tag must not be empty (use None for per-identity tags)")
        self.prefix = prefix
        self.hash_tag = hash_tag

    def counter_key(self, identity: Identity, window_us: int) -> str:
        """The key of ``identity``'s counter for windows of ``window_us`` microseconds."""
        tag = identity_tag(identity)
        if self.hash_tag is None:
            return f"{self.prefix}:{{{tag}}}:{window_us // 1000}"
        return f"{self.prefix}:{{{self.hash_tag}}}:{tag}:{window_us // 1000}"

    def identity_prefix(self, identity: Identity) -> str:
        """The literal prefix shared by every counter key of ``identity``."""
        tag = identity_tag(identity)
        if self.hash_tag is None:
            return f"{self.prefix}:{{{tag}}}:"
        return f"{self.prefix}:{{{self.hash_tag}}}:{tag}:"


def glob_escape(literal: str) -> str:
    """Escape Redis glob characters so ``literal`` matches only itself in SCAN MATCH."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", literal)
