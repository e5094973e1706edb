"""The Redis Lua scripts, loaded from the package data (``lua/`` in the source tree)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

__all__ = ["LuaScript", "lua_script"]

# lua/ lives at the repository root (the single source of truth). The wheel carries it
# as ratelimit/lua/; an editable install or a plain checkout finds it one level up.
_SOURCE_TREE_DIR = Path(__file__).resolve().parents[2] / "lua"


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script's source and its SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str
    origin: str


@cache
def lua_script(name: str) -> LuaScript:
    """Load ``lua/<name>.lua`` from the installed package, else from the source tree."""
    filename = f"{name}.lua"
    packaged = resources.files("ratelimit").joinpath("lua").joinpath(filename)
    if packaged.is_file():
        source, origin = packaged.read_text(encoding="utf-8"), f"package:ratelimit/lua/{filename}"
    else:
        path = _SOURCE_TREE_DIR / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"Lua script {filename!r} is neither in the installed package (ratelimit/lua/) "
                f"nor in the source tree ({_SOURCE_TREE_DIR}); the installation is incomplete"
            )
        source, origin = path.read_text(encoding="utf-8"), str(path)
    sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
    return LuaScript(name, source, sha, origin)
