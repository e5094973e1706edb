"""The test matrix and the release checks, in one command: ``python -m nox``.

Sessions, in the order a bare ``nox`` runs them:

- ``tests``: the whole suite on the interpreter running nox, in the current environment
  (the one ``pip install -e '.[dev]'`` just filled).
- ``compat-3.N``: every other supported Python, each in a fresh venv: every module of
  the package compiled and imported (a syntax that only a newer Python accepts fails
  here), then the suite without the Cluster and Sentinel fixtures and the ``slow``
  tests (real servers under load), which exercise no interpreter-specific code of ours.
- ``build``: the sdist and the wheel, checked with ``twine check --strict`` and for
  their contents and metadata (version, classifiers, Lua scripts, ``py.typed``).
- ``wheel-3.N``: for every supported Python, a fresh venv with the built wheel
  installed (not the checkout) and ``tests/smoke`` run against a real Redis, one smoke
  test per adapter.

The supported Pythons are the ``Programming Language :: Python :: 3.N`` classifiers of
pyproject.toml, so the matrix cannot drift from what the package claims. Interpreters
come from PATH or from pyenv (``~/.pyenv/versions/3.N.*``). A missing one is reported
loudly; with ``CI=true`` it fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
DIST = ROOT / ".nox" / "_dist"
CI = os.environ.get("CI", "").strip().lower() == "true"


def _supported() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)


def _pyenv_dirs(versions: list[str]) -> None:
    """Put pyenv's interpreters on PATH: its shims only run the versions selected globally."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for version in versions:
        candidates = sorted(root.glob(f"{version}.*/bin/python{version}"))
        if candidates:
            found.append(str(candidates[-1].parent))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


SUPPORTED = _supported()
DEFAULT = f"{sys.version_info.major}.{sys.version_info.minor}"
OTHERS = [v for v in SUPPORTED if v != DEFAULT]
_pyenv_dirs(SUPPORTED)

MISSING = [v for v in SUPPORTED if v != DEFAULT and shutil.which(f"python{v}") is None]
if MISSING:
    banner = "!" * 78
    print(
        f"{banner}\n!! MISSING PYTHON INTERPRETERS: {', '.join(MISSING)} "
        f"(supported: {', '.join(SUPPORTED)})\n!! Their sessions "
        + ("FAIL (CI=true)." if CI else "are SKIPPED: install them (pyenv install 3.N) to test them.")
        + f"\n{banner}",
        file=sys.stderr,
    )

PYTEST = ("python", "-m", "pytest", "-p", "no:cacheprovider")

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = CI
nox.options.sessions = ["tests", "compat", "build", "wheel"]

# Imports every module of the package, so a SyntaxError anywhere (say, `await` in a
# nested comprehension, which Python 3.10 refuses) fails even where no test reaches.
IMPORT_ALL = """
import importlib, pkgutil, ratelimit
names = [m.name for m in pkgutil.walk_packages(ratelimit.__path__, "ratelimit.")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} modules of ratelimit on", __import__("sys").version.split()[0])
"""


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The whole suite, on this interpreter, in the current environment."""
    session.run(sys.executable, "-m", "pytest", *session.posargs)


@nox.session(python=OTHERS)
def compat(session: nox.Session) -> None:
    """Another supported Python: import every module, then the suite without Cluster/Sentinel/slow."""
    session.install("-e", ".[dev]")
    session.run("python", "-c", IMPORT_ALL)
    session.run(*PYTEST, "-m", "not cluster and not sentinel and not slow", *session.posargs)


@nox.session(python=False)
def build(session: nox.Session) -> None:
    """Build the sdist and wheel into .nox/_dist and check their metadata and contents."""
    shutil.rmtree(DIST, ignore_errors=True)
    session.run(sys.executable, "-m", "build", "--outdir", str(DIST), str(ROOT))
    artifacts = sorted(str(p) for p in DIST.iterdir())
    session.run(sys.executable, "-m", "twine", "check", "--strict", *artifacts)
    _check_wheel(_built_wheel())


@nox.session(python=SUPPORTED)
def wheel(session: nox.Session) -> None:
    """Install the built wheel (not the checkout) in a fresh venv and smoke-test every adapter."""
    if not DIST.exists():
        session.error("no built wheel: run the build session first (nox -s build)")
    built = _built_wheel()
    session.install(f"{built}[all]", "pytest>=8", "pytest-asyncio>=0.23", "httpx>=0.27")
    smoke = ROOT / "tests" / "smoke"
    tmp = session.create_tmp()
    session.chdir(tmp)  # never import the checkout
    session.run(
        *PYTEST,
        "-p",
        "no:asyncio",  # the smoke tests use asyncio.run; -c drops the plugin's ini options
        "-c",
        os.devnull,
        f"--rootdir={smoke}",
        f"--confcutdir={smoke}",
        str(smoke),
        *session.posargs,
    )


def _built_wheel() -> Path:
    wheels = sorted(DIST.glob("ambient_ratelimit-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {DIST}, found {wheels}")
    return wheels[0]


def _check_wheel(path: Path) -> None:
    """The wheel carries the Lua scripts and py.typed, and its metadata says what we claim."""
    from email.parser import Parser

    version = re.search(r'^__version__ = "([^"]+)"', (ROOT / "ratelimit" / "__init__.py").read_text(), re.M)
    assert version is not None, "ratelimit/__init__.py has no __version__"
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_name).decode())
        for script in sorted((ROOT / "lua").glob("*.lua")):
            packed = f"ratelimit/lua/{script.name}"
            if packed not in names or zf.read(packed) != script.read_bytes():
                raise RuntimeError(f"{path.name}: {packed} missing or different from lua/")
    problems = []
    if "ratelimit/py.typed" not in names:
        problems.append("py.typed missing")
    if meta["Version"] != version.group(1):
        problems.append(f"Version {meta['Version']} != ratelimit.__version__ {version.group(1)}")
    if meta["Requires-Python"] != f">={SUPPORTED[0]}":
        problems.append(f"Requires-Python {meta['Requires-Python']} != >={SUPPORTED[0]}")
    classifiers = meta.get_all("Classifier") or []
    for v in SUPPORTED:
        if f"Programming Language :: Python :: {v}" not in classifiers:
            problems.append(f"no classifier for Python {v}")
    if problems:
        raise RuntimeError(f"{path.name}: " + "; ".join(problems))
    print(f"{path.name}: version {meta['Version']}, Python {', '.join(SUPPORTED)}, lua + py.typed ok")
