"""The Lua scripts ship inside the wheel and load from an installed wheel and an editable install."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LUA = sorted((ROOT / "lua").glob("*.lua"))

CHECK = """
import sys, ratelimit
from ratelimit import Limiter
from ratelimit._core.scripts import lua_script
assert "site-packages" in ratelimit.__file__, ratelimit.__file__
for name in ("sliding_window", "refund"):
    assert lua_script(name).origin.startswith("package:"), lua_script(name).origin
with Limiter(sys.argv[1], prefix="wheelcheck") as limiter:
    limiter.reset("w")
    answers = [limiter.hit("w", "2/minute") for _ in range(3)]
assert [d.allowed for d in answers] == [True, True, False], answers
assert not any(d.fallback for d in answers), answers
print("wheel ok", ratelimit.__file__)
"""


@pytest.mark.slow
def test_wheel_carries_lua_and_works_installed(tmp_path: Path, redis_url: str) -> None:
    """A built wheel contains lua/ as package data, and an install of it decides on real Redis."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("ambient_ratelimit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "ratelimit/py.typed" in names
        for script in LUA:
            assert zf.read(f"ratelimit/lua/{script.name}") == script.read_bytes()
    venv = tmp_path / "venv"
    python = _venv_seeing_this_environment(venv)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [str(python), "-c", CHECK, redis_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wheel ok" in result.stdout and str(venv) in result.stdout


def _venv_seeing_this_environment(venv: Path) -> Path:
    """A fresh venv that also sees the packages of the environment running the tests.

    ``--system-site-packages`` would not do: run from inside a virtualenv it sees the base
    interpreter's site-packages, not the virtualenv's, so redis-py may be missing there.
    A ``.pth`` file naming this environment's site directories works from a virtualenv and
    from a system install alike; the venv's own site-packages (where the wheel goes) still
    comes first on ``sys.path``, and a path line in a ``.pth`` file does not run the
    ``.pth`` files (the editable install) it points at.
    """
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_outer_environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_source_tree_scripts_load() -> None:
    """From a checkout or editable install, the scripts load from lua/ itself."""
    from ratelimit._core.scripts import lua_script

    for script in LUA:
        loaded = lua_script(script.stem)
        assert loaded.source == script.read_text(encoding="utf-8")
        assert len(loaded.sha) == 40


def test_import_needs_no_optional_dependency() -> None:
    """import ratelimit and the memory backend work with redis, starlette etc. unimportable."""
    code = (
        "import sys\n"
        "for name in ('redis', 'starlette', 'grpc', 'jwt', 'prometheus_client', 'yaml', 'hiredis'):\n"
        "    sys.modules[name] = None\n"
        "import ratelimit\n"
        "assert ratelimit.Limiter().hit('a', '1/second').allowed\n"
        "try:\n"
        "    ratelimit.Limiter('redis://localhost:6379/0')\n"
        "except ImportError as exc:\n"
        "    assert 'ambient-ratelimit[redis]' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('expected ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
