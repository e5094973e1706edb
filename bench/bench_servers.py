"""End-to-end throughput behind real servers: the same tiny app bare and rate-limited.

ASGI apps run under uvicorn (uvloop + httptools, one worker), Flask apps under gunicorn
(gthread, one worker, 8 threads), both loaded by ``wrk -t1 -c64`` with a Lua script
that rotates the requests over 500 subjects; gRPC servers (sync and aio) run in a
process of their own, loaded by a Python gRPC client process. Every variant gets a fresh
server process per round; variants are interleaved (the order rotates every round), and
each table shows median req/s and the median per-round ratio to the family's bare app,
with status counts, failure-policy answers and Redis commands and CPU per request, so
that a row that did not measure real decisions is flagged INVALID. See bench/README.md.

    python bench/bench_servers.py                               # everything (~15 min)
    python bench/bench_servers.py --families asgi --variants bare,engine-wrapper
    python bench/bench_servers.py --quick --families asgi --variants bare,decorator-memory
    python bench/bench_servers.py --list
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.dont_write_bytecode = True  # nothing written into the repository (no __pycache__)
for _p in (str(_ROOT), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _redis import RedisProbe, redis_server, redis_server_binary, redis_version  # noqa: E402
from _servers.common import ITEMS_PATH, STATS_PATH, SUBJECT_HEADER, TIER_HEADER, tiers_config  # noqa: E402

FAMILIES = ("asgi", "wsgi", "grpc")
TITLES = {
    "asgi": "ASGI behind uvicorn (uvloop + httptools, 1 worker), wrk load",
    "wsgi": "WSGI / Flask behind gunicorn (gthread, 1 worker, 8 threads), wrk load",
    "grpc": "gRPC servers (own process), Python gRPC client load",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
NOISE_LIMIT = [15.0]  #: --noise-limit, for the report
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# ---------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One row of a family's table."""

    name: str
    family: str
    description: str
    baseline: str | None = None  #: the bare variant of this row's ratio (None: it is one)
    target: float | None = None  #: the issue's target ratio to the bare app
    needs_redis: bool = False
    requires: tuple[str, ...] = ()  #: importable modules
    peer: bool = False  #: another library: skipped when missing, its failure is not fatal
    denials_expected: bool = False  #: the deny-path row (exempt from "every request allowed")
    subjects: str = "user"  #: request identities: "user" (x-user-id), "tier" (+ plan), "jwt"


_A = ("starlette", "uvicorn", "uvloop", "httptools")
_W = ("flask", "gunicorn")
_G = ("grpc",)

VARIANTS: list[Variant] = [
    Variant("bare", "asgi", "Starlette, GET /items -> PlainTextResponse('ok')", requires=_A),
    Variant(
        "wrapper-noop",
        "asgi",
        "the engine-wrapper's 10 lines around a check that allows everything (no limiter): "
        "the wrapper's own cost",
        "bare",
        None,
        False,
        _A,
    ),
    Variant(
        "engine-wrapper",
        "asgi",
        "10-line raw ASGI wrapper: await limiter.ahit(x-user-id, rate), 429 if denied; Redis",
        "bare",
        0.85,
        True,
        _A,
    ),
    Variant(
        "decorator",
        "asgi",
        "@limiter.limit(rate, key=header('x-user-id')) on the endpoint "
        "+ RateLimitMiddleware(app, limiter); Redis",
        "bare",
        0.75,
        True,
        _A,
    ),
    Variant(
        "middleware-rule",
        "asgi",
        "RateLimitMiddleware(app, limiter, key=header('x-user-id'), limits={'/items': rate}); Redis",
        "bare",
        None,
        True,
        _A,
    ),
    Variant(
        "config-tiers",
        "asgi",
        "Limiter.from_config(yaml: tiers by header x-user-plan, free/pro(2 limits)/default) "
        "+ RateLimitMiddleware(app, limiter); Redis",
        "bare",
        None,
        True,
        (*_A, "yaml"),
        subjects="tier",
    ),
    Variant(
        "jwt-subject",
        "asgi",
        "RateLimitMiddleware(key=jwt_subject(key=RS256 public PEM), limits={'/items': rate}), "
        "500 users' RS256 tokens; Redis",
        "bare",
        None,
        True,
        (*_A, "jwt", "cryptography"),
        subjects="jwt",
    ),
    Variant(
        "engine-wrapper-memory",
        "asgi",
        "engine-wrapper on Limiter() (memory backend)",
        "bare",
        None,
        False,
        _A,
    ),
    Variant("decorator-memory", "asgi", "decorator on Limiter() (memory backend)", "bare", 0.90, False, _A),
    Variant(
        "middleware-rule-memory",
        "asgi",
        "middleware-rule on Limiter() (memory backend)",
        "bare",
        None,
        False,
        _A,
    ),
    Variant(
        "middleware-rule-memory-noheaders",
        "asgi",
        "diagnostic: middleware-rule-memory with headers=False, legacy_headers=False "
        "(no RateLimit / X-RateLimit fields on allowed responses)",
        "bare",
        None,
        False,
        _A,
    ),
    Variant(
        "jwt-subject-memory",
        "asgi",
        "jwt-subject on Limiter() (memory backend)",
        "bare",
        None,
        False,
        (*_A, "jwt", "cryptography"),
        subjects="jwt",
    ),
    Variant(
        "limits-async",
        "asgi",
        "peer: limits' SlidingWindowCounterRateLimiter on async+redis (coredis), same 10-line wrapper",
        "bare",
        None,
        True,
        (*_A, "limits", "coredis"),
        peer=True,
    ),
    Variant(
        "throttled-py",
        "asgi",
        "peer: throttled-py asyncio Throttled(sliding_window, RedisStore), same 10-line wrapper",
        "bare",
        None,
        True,
        (*_A, "throttled"),
        peer=True,
    ),
    Variant(
        "deny-path",
        "asgi",
        "middleware-rule on Redis with a low limit (BENCH_DENY_RATE, 10/minute): nearly all denied",
        "bare",
        None,
        True,
        _A,
        denials_expected=True,
    ),
    Variant("bare-flask", "wsgi", "Flask, GET /items -> 'ok'", requires=_W),
    Variant(
        "wsgi-middleware",
        "wsgi",
        "app.wsgi_app = ratelimit.wsgi.RateLimitMiddleware(key=header('x-user-id'), "
        "limits={'/items': rate}); Redis",
        "bare-flask",
        0.80,
        True,
        _W,
    ),
    Variant(
        "wsgi-middleware-memory",
        "wsgi",
        "wsgi-middleware on Limiter() (memory backend)",
        "bare-flask",
        None,
        False,
        _W,
    ),
    Variant(
        "flask-decorator",
        "wsgi",
        "ratelimit.flask.RateLimit(app, limiter) + @limiter.limit(rate, key=header('x-user-id')); Redis",
        "bare-flask",
        None,
        True,
        _W,
    ),
    Variant(
        "flask-limiter",
        "wsgi",
        "peer: flask-limiter, storage redis, strategy sliding-window-counter, @limiter.limit",
        "bare-flask",
        None,
        True,
        (*_W, "flask_limiter"),
        peer=True,
    ),
    Variant("sync-bare", "grpc", "grpc.server(ThreadPoolExecutor(8)), unary GetCart", requires=_G),
    Variant(
        "sync-interceptor",
        "grpc",
        "RateLimitInterceptor(limiter, {'/shop.Cart/GetCart': rate}, key=header('x-user-id')); Redis",
        "sync-bare",
        0.85,
        True,
        _G,
    ),
    Variant(
        "sync-interceptor-memory",
        "grpc",
        "sync-interceptor on Limiter() (memory backend)",
        "sync-bare",
        None,
        False,
        _G,
    ),
    Variant("aio-bare", "grpc", "grpc.aio.server(), async unary GetCart", requires=_G),
    Variant(
        "aio-interceptor",
        "grpc",
        "AsyncRateLimitInterceptor(limiter, {'/shop.Cart/GetCart': rate}, key=header('x-user-id')); Redis",
        "aio-bare",
        0.85,
        True,
        _G,
    ),
    Variant(
        "aio-interceptor-memory",
        "grpc",
        "aio-interceptor on Limiter() (memory backend)",
        "aio-bare",
        None,
        False,
        _G,
    ),
]
BY_NAME = {v.name: v for v in VARIANTS}


def missing_modules(v: Variant) -> list[str]:
    return [m for m in v.requires if importlib.util.find_spec(m) is None]


# ------------------------------------------------------------------------- settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per run (default 8)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections / gRPC calls in flight")
    p.add_argument("--subjects", type=int, default=500, help="distinct identities (default 500)")
    p.add_argument("--families", default=",".join(FAMILIES), help="asgi,wsgi,grpc (default: all)")
    p.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--rate", default="1000000/minute", help="limit of the allowed rows")
    p.add_argument("--deny-rate", default="10/minute", help="limit of the deny-path row")
    p.add_argument("--grpc-clients", type=int, default=1, help="gRPC load generator processes")
    p.add_argument("--grpc-channels", type=int, default=1, help="channels per gRPC load generator")
    p.add_argument(
        "--package-dir",
        type=Path,
        default=_ROOT,
        help="directory holding the ratelimit package (and lua/) the servers import "
        "(default: this checkout; e.g. a snapshot from `git archive HEAD ratelimit lua`)",
    )
    p.add_argument(
        "--uvicorn-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="uvicorn's event loop (default uvloop, what uvicorn[standard] picks)",
    )
    p.add_argument(
        "--noise-limit",
        type=float,
        default=15.0,
        help="a run during which other processes kept more than this %% of the machine's CPU busy "
        "is measured again (default 15)",
    )
    p.add_argument(
        "--noise-retries",
        type=int,
        default=None,
        help="at most this many repeats per run (default 2; --quick: 0)",
    )
    p.add_argument(
        "--noise-pause", type=float, default=5.0, help="seconds to wait before repeating a noisy run"
    )
    p.add_argument("--redis-url", default=None, help="use this Redis instead of a private redis-server")
    p.add_argument(
        "--profile",
        metavar="VARIANT",
        default=None,
        help="after the tables, one more run of this ASGI or gRPC variant with its server under "
        "cProfile; print the top functions by own time",
    )
    p.add_argument("--profile-top", type=int, default=25, help="functions shown by --profile")
    p.add_argument("--quick", action="store_true", help="smoke size: 1 round, 2 s runs, 1 s warm-up")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not args.families or any(f not in FAMILIES for f in args.families):
        p.error(f"--families: choose from {', '.join(FAMILIES)}")
    args.variant_names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_names if v not in BY_NAME]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)} (see --list)")
    args.package_dir = args.package_dir.resolve()
    if not (args.package_dir / "ratelimit" / "__init__.py").exists():
        p.error(f"--package-dir: no ratelimit/__init__.py under {args.package_dir}")
    if args.noise_retries is None:
        args.noise_retries = 0 if args.quick else 2
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 2.0 if args.quick else 8.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.subjects < 1:
        p.error("--rounds, --duration, --connections and --subjects must be positive")
    if args.profile is not None and (args.profile not in BY_NAME or BY_NAME[args.profile].family == "wsgi"):
        p.error("--profile: an ASGI or gRPC variant (gunicorn forks its worker: not profiled)")
    if args.grpc_clients < 1 or args.grpc_channels < 1:
        p.error("--grpc-clients and --grpc-channels must be positive")
    return args


def selected(args: argparse.Namespace) -> dict[str, list[Variant]]:
    """The variants to run, by family, each family's bare apps included (the ratios need them)."""
    out: dict[str, list[Variant]] = {}
    for family in args.families:
        rows = [v for v in VARIANTS if v.family == family]
        if args.variant_names:
            wanted = {n for n in args.variant_names if BY_NAME[n].family == family}
            wanted |= {BY_NAME[n].baseline for n in wanted if BY_NAME[n].baseline}  # type: ignore[misc]
            rows = [v for v in rows if v.name in wanted]
        if rows:
            out[family] = rows
    return out


# ------------------------------------------------------------- processes and CPU time


_LIVE: set[subprocess.Popen[Any]] = set()


def _kill_group(proc: subprocess.Popen[Any], timeout: float = 5.0, first: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session, and every process of its group.

    Signals go to the group only while its leader is not reaped (a zombie leader still
    holds the group id, so the id cannot belong to anybody else); the leader is reaped
    last, once no other member of the group (a gunicorn worker) is left.
    """
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    if proc.returncode is None:
        for sig in (first, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + timeout
            while _live_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _live_members(pgid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    _LIVE.discard(proc)


def _live_members(pgid: int) -> int:
    """How many processes of group ``pgid`` are alive (zombies excluded), from /proc."""
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[2]) == pgid and fields[0] != b"Z":
                n += 1
    return n


def _stat_fields(pid: str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].split()


@atexit.register
def _cleanup() -> None:
    for proc in list(_LIVE):
        _kill_group(proc, timeout=2.0)


def _popen(cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _LIVE.add(proc)
    return proc


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU seconds of every live process in process group ``pgid`` (from /proc)."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = parts
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with _NO_PROXY.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


# --------------------------------------------------------------------- run records


@dataclass
class Run:
    """What one measured run of one variant observed."""

    rps: float = 0.0
    requests: int = 0  #: answered requests in the window (the server's count; gRPC: the client's)
    statuses: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0  #: wrk socket errors / client-side failures
    fallbacks: int | None = 0
    backend_errors: int | None = 0
    redis_cmds: int = 0
    redis_scripts: int = 0  #: EVAL/EVALSHA/FCALL calls (a coalesced batch is one)
    redis_cpu: float = 0.0
    server_cpu: float = 0.0
    load_cpu: float = 0.0
    unattributed_cpu: float = 0.0  #: busy CPU of the machine not spent by server, Redis, load, harness
    elapsed: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    error: str | None = None

    def count(self, key: str) -> int:
        return self.statuses.get(key, 0)

    @property
    def noise(self) -> float:
        """Busy CPU of the machine spent elsewhere, in % of all cores (another process's load)."""
        return self.unattributed_cpu / (self.elapsed * NCPU) * 100 if self.elapsed > 0 else 0.0

    @property
    def other(self) -> int:
        return sum(n for k, n in self.statuses.items() if k not in ("200", "429")) + self.unanswered


@dataclass
class Row:
    variant: Variant
    runs: dict[int, Run] = field(default_factory=dict)  #: by round
    skipped: str | None = None

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs.values() if r.error is None]

    @property
    def error(self) -> str | None:
        errs = [r.error for r in self.runs.values() if r.error]
        return errs[0] if errs else None


# ------------------------------------------------------------------------ load: wrk


WRK_LUA = """\
-- Generated by bench/bench_servers.py: GET {path}, rotating over {n} identities.
local idents = {{
{idents}
}}
local reqs = {{}}
local n = #idents
local i = 0

init = function(args)
  for k = 1, n do
    reqs[k] = wrk.format("GET", "{path}", idents[k])
  end
end

request = function()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99))))
end
"""

PLANS = ("free", "pro", "team")  # team is no listed tier: the rule's default


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(path: Path, idents: list[dict[str, str]]) -> Path:
    rows = ",\n".join(
        "  {" + ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in h.items()) + "}" for h in idents
    )
    path.write_text(WRK_LUA.format(path=ITEMS_PATH, n=len(idents), idents=rows))
    return path


def run_wrk(
    port: int, script: Path, seconds: float, connections: int, cwd: Path
) -> tuple[dict[str, Any], float]:
    """One wrk run; its ``done()`` summary and the CPU seconds wrk used."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{ITEMS_PATH}",
    ]
    cpu0 = children_cpu_seconds()
    proc = _popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        _kill_group(proc)
    cpu = children_cpu_seconds() - cpu0
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON ") :]), cpu
    raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}): {out[-500:]} {err[-500:]}")


# ------------------------------------------------------------------- server process


class Server:
    """One server process (its own process group) for one variant and one run."""

    def __init__(self, cmd: list[str], env: dict[str, str], stats_url: str, workdir: Path, name: str) -> None:
        self.stats_url = stats_url
        self.log = workdir / f"server-{name}.log"
        self._log = self.log.open("wb")
        self.proc = _popen(
            cmd, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

    def wait_ready(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:.0f}s: {self.log_tail()}")

    def stats(self) -> dict[str, Any]:
        return http_get_json(self.stats_url)

    def cpu(self) -> float:
        return group_cpu_seconds(self.proc.pid)

    def log_tail(self, n: int = 1500) -> str:
        self._log.flush()
        text = self.log.read_text(errors="replace")
        return " / ".join(line.strip() for line in text[-n:].splitlines() if line.strip())

    def stop(self, timeout: float = 5.0, first: int = signal.SIGTERM) -> None:
        _kill_group(self.proc, timeout, first)
        self._log.close()


# ----------------------------------------------------------------------- the bench


@dataclass
class Env:
    args: argparse.Namespace
    workdir: Path
    redis: RedisProbe | None
    scripts: dict[str, Path] = field(default_factory=dict)  #: wrk script by subjects kind
    jwt_public_key: Path | None = None
    jwt_tokens: list[str] = field(default_factory=list)
    config_file: Path | None = None
    gunicorn_flags: list[str] = field(default_factory=list)


def make_jwt_material(env: Env) -> None:
    """An RS256 key pair (cryptography) and one token per subject (PyJWT), in the temp dir."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    env.jwt_public_key = env.workdir / "jwt-public.pem"
    env.jwt_public_key.write_bytes(pem)
    now = int(time.time())
    env.jwt_tokens = [
        jwt.encode({"sub": f"user-{i}", "iat": now, "exp": now + 7 * 86400}, key, algorithm="RS256")
        for i in range(env.args.subjects)
    ]


def script_for(env: Env, kind: str) -> Path:
    if kind not in env.scripts:
        n = env.args.subjects
        if kind == "user":
            idents = [{SUBJECT_HEADER: f"user-{i}"} for i in range(n)]
        elif kind == "tier":
            idents = [{SUBJECT_HEADER: f"user-{i}", TIER_HEADER: PLANS[i % len(PLANS)]} for i in range(n)]
        else:
            if not env.jwt_tokens:
                make_jwt_material(env)
            idents = [{"Authorization": f"Bearer {t}"} for t in env.jwt_tokens]
        env.scripts[kind] = wrk_script(env.workdir / f"wrk-{kind}.lua", idents)
    return env.scripts[kind]


def child_env(env: Env, v: Variant) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    # The package under test first (the checkout, or --package-dir), then bench/ for _servers.
    paths = [str(env.args.package_dir), str(_HERE), *filter(None, [e.get("PYTHONPATH")])]
    e["PYTHONPATH"] = os.pathsep.join(paths)
    e["BENCH_VARIANT"] = v.name
    e["BENCH_RATE"] = env.args.rate
    e["BENCH_DENY_RATE"] = env.args.deny_rate
    if env.redis is not None:
        e["BENCH_REDIS_URL"] = env.redis.url
    if v.subjects == "jwt":
        script_for(env, "jwt")
        assert env.jwt_public_key is not None
        e["BENCH_JWT_PUBLIC_KEY_FILE"] = str(env.jwt_public_key)
    if v.name == "config-tiers":
        if env.config_file is None:
            assert env.redis is not None
            env.config_file = env.workdir / "limits.yaml"
            env.config_file.write_text(tiers_config(env.redis.url, env.args.rate))
        e["BENCH_CONFIG_FILE"] = str(env.config_file)
    return e


def start_server(env: Env, v: Variant, profile: Path | None = None) -> tuple[Server, int]:
    port = free_port()
    e = child_env(env, v)
    python = [sys.executable] if profile is None else [sys.executable, "-m", "cProfile", "-o", str(profile)]
    if v.family == "asgi":
        cmd = [
            *python, "-m", "uvicorn", "_servers.asgi_app:create_app", "--factory",
            "--app-dir", str(_HERE), "--host", "127.0.0.1", "--port", str(port),
            "--loop", env.args.uvicorn_loop, "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        stats_url = f"http://127.0.0.1:{port}{STATS_PATH}"
    elif v.family == "wsgi":
        cmd = [
            sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "8",
            "-b", f"127.0.0.1:{port}", "--pythonpath", str(_HERE), "--log-level", "warning",
            *env.gunicorn_flags, "_servers.wsgi_app:create_app()",
        ]  # fmt: skip
        stats_url = f"http://127.0.0.1:{port}{STATS_PATH}"
    else:
        stats_port = free_port()
        e["BENCH_PORT"], e["BENCH_STATS_PORT"] = str(port), str(stats_port)
        cmd = [*python, str(_HERE / "_servers" / "grpc_server.py")]
        stats_url = f"http://127.0.0.1:{stats_port}{STATS_PATH}"
    server = Server(cmd, e, stats_url, env.workdir, v.name)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server, port


class LoadClients:
    """The gRPC load generator processes of one run (warm-up, then a measured phase on "go")."""

    def __init__(self, env: Env, port: int) -> None:
        a = env.args
        per_client = max(1, a.connections // a.grpc_clients)
        self.procs: list[subprocess.Popen[str]] = []
        self.lines: list[queue.Queue[str]] = []
        for k in range(a.grpc_clients):
            cmd = [
                sys.executable, str(_HERE / "_servers" / "grpc_load.py"), "--target", f"127.0.0.1:{port}",
                "--concurrency", str(per_client), "--channels", str(a.grpc_channels),
                "--warmup", str(a.warmup), "--duration", str(a.duration),
                "--subjects", str(a.subjects), "--offset", str(k * a.subjects // a.grpc_clients),
            ]  # fmt: skip
            e = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
            proc = _popen(
                cmd, env=e, cwd=env.workdir, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            q: queue.Queue[str] = queue.Queue()
            threading.Thread(target=self._pump, args=(proc, q), daemon=True).start()
            self.procs.append(proc)
            self.lines.append(q)

    @staticmethod
    def _pump(proc: subprocess.Popen[str], q: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put("")  # EOF

    def _expect(self, prefix: str, timeout: float) -> list[str]:
        out = []
        deadline = time.monotonic() + timeout
        for q in self.lines:
            seen: list[str] = []
            while True:
                try:
                    line = q.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError(f"gRPC load client: no {prefix} line; output: {seen[-5:]}") from None
                if line.startswith(prefix):
                    out.append(line)
                    break
                if line == "" and q.empty():
                    raise RuntimeError(f"gRPC load client exited before {prefix}: {seen[-5:]}")
                seen.append(line)
        return out

    def wait_warm(self, timeout: float) -> None:
        self._expect("WARM", timeout)

    def go(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return [json.loads(line.split(" ", 1)[1]) for line in self._expect("RESULT ", timeout)]

    def stop(self) -> None:
        for p in self.procs:
            _kill_group(p)


def measure(env: Env, v: Variant, profile: Path | None = None) -> Run:
    """Start the variant's server, warm it up, measure one run, stop it."""
    a = env.args
    if env.redis is not None:
        env.redis.reset()
    server, port = start_server(env, v, profile)
    clients: LoadClients | None = None
    try:
        if v.family == "grpc":
            clients = LoadClients(env, port)
            clients.wait_warm(a.warmup + 60)
        else:
            script = script_for(env, v.subjects)
            if a.warmup > 0:
                run_wrk(port, script, a.warmup, a.connections, env.workdir)
        s0 = server.stats()
        imported = s0.get("ratelimit")
        if imported and not Path(imported).resolve().is_relative_to(a.package_dir):
            raise RuntimeError(f"the server imported ratelimit from {imported}, not from {a.package_dir}")
        r0 = env.redis.snapshot() if env.redis else (0, 0, 0.0)
        cpu0, busy0, self0, t0 = server.cpu(), machine_busy_seconds(), self_cpu_seconds(), time.perf_counter()
        run = Run()
        if clients is not None:
            clients.go()
            results = clients.results(a.duration + 90)
            codes: dict[str, int] = {}
            for r in results:
                for name, n in r["codes"].items():
                    codes[name] = codes.get(name, 0) + n
            mapped = {"OK": "200", "RESOURCE_EXHAUSTED": "429"}
            run.statuses = {mapped.get(k, k): n for k, n in codes.items()}
            run.requests = sum(codes.values())
            run.rps = sum(r["calls"] / r["elapsed"] for r in results if r["elapsed"] > 0)
            run.load_cpu = sum(r["cpu"] for r in results)
        else:
            wrk, run.load_cpu = run_wrk(port, script, a.duration, a.connections, env.workdir)
            run.rps = wrk["requests"] / (wrk["duration_us"] / 1e6)
            run.unanswered = wrk["connect"] + wrk["read"] + wrk["write"] + wrk["timeout"]
            run.p50_ms, run.p99_ms = wrk["p50_us"] / 1000, wrk["p99_us"] / 1000
        run.elapsed = time.perf_counter() - t0
        cpu1, busy1, self1 = server.cpu(), machine_busy_seconds(), self_cpu_seconds()
        r1 = env.redis.snapshot() if env.redis else (0, 0, 0.0)
        if clients is None:
            time.sleep(0.3)  # let requests still in the server finish: those that never do are unanswered
        s1 = server.stats()
        if clients is None:
            run.statuses = {
                k: n - s0["statuses"].get(k, 0)
                for k, n in s1["statuses"].items()
                if n - s0["statuses"].get(k, 0)
            }
            run.requests = sum(run.statuses.values())
            hung = (s1["started"] - s0["started"]) - run.requests
            run.unanswered += max(0, hung)
        if run.requests == 0:
            raise RuntimeError(
                f"no request answered in {a.duration:g} s ({run.unanswered} unanswered); "
                f"server log: {server.log_tail(600)}"
            )
        for key in ("fallbacks", "backend_errors"):
            # backend errors count from server start: one in the warm-up can open the breaker,
            # whose later failure-policy answers report no error of their own.
            base = 0 if key == "backend_errors" else s0[key]
            setattr(run, key, None if s1[key] is None else s1[key] - (base or 0))
        run.redis_cmds, run.redis_scripts, run.redis_cpu = r1[0] - r0[0], r1[1] - r0[1], r1[2] - r0[2]
        run.server_cpu = cpu1 - cpu0
        run.unattributed_cpu = max(
            0.0, (busy1 - busy0) - run.server_cpu - run.redis_cpu - run.load_cpu - (self1 - self0)
        )
        return run
    finally:
        if clients is not None:
            clients.stop()
        # A profiled server gets SIGINT: uvicorn re-raises the signal it shut down on, and
        # KeyboardInterrupt (unlike death by SIGTERM) still lets cProfile write its file.
        server.stop(30.0, signal.SIGINT) if profile else server.stop()


# ---------------------------------------------------------------------------- report


def _cell(text: str, limit: int) -> str:
    """Text safe inside a Markdown table cell, shortened to ``limit`` characters."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def _per_1k(total: float, requests: int) -> float:
    return total / requests * 1e6 if requests else float("nan")  # seconds per request * 1e6 = ms / 1000


def validity(row: Row) -> str:
    """Whether the row measured real decisions ("ok"), or why not ("INVALID: ...")."""
    runs = row.ok_runs
    problems = []
    other = sum(r.other for r in runs)
    if other:
        problems.append(f"{other} other/unanswered")
    fallbacks = [r.fallbacks for r in runs if r.fallbacks is not None]
    errors = [r.backend_errors for r in runs if r.backend_errors is not None]
    if any(fallbacks):
        problems.append(f"{sum(fallbacks)} fallbacks")
    if any(errors):
        problems.append(f"{sum(errors)} backend errors")
    denied = sum(r.count("429") for r in runs)
    if denied and not row.variant.denials_expected:
        problems.append(f"{denied} denied in an all-allowed row")
    noisy = sum(1 for r in runs if r.noise > NOISE_LIMIT[0])
    note = f"; {noisy} of {len(runs)} runs noisy" if noisy else ""
    if row.variant.denials_expected:
        n = sum(r.requests for r in runs)
        share = f"429: {denied / n:.1%}" if n else "no requests"
        return (
            f"INVALID: {', '.join(problems)} ({share}){note}" if problems else f"ok (deny row, {share}){note}"
        )
    return f"INVALID: {', '.join(problems)}{note}" if problems else f"ok{note}"


def ratios(row: Row, rows: dict[str, Row]) -> list[float]:
    base = rows.get(row.variant.baseline or row.variant.name)
    if base is None:
        return []
    out = []
    for rnd, run in row.runs.items():
        b = base.runs.get(rnd)
        if run.error is None and b is not None and b.error is None and b.rps > 0:
            out.append(run.rps / b.rps)
    return out


def family_table(family: str, rows: list[Row]) -> list[str]:
    by_name = {r.variant.name: r for r in rows}
    lines = [
        f"### {TITLES[family]}",
        "",
        "| variant | req/s (median) | range | vs bare | target | 200 / 429 / other | fallbacks "
        "| redis cmds/req | redis CPU ms/1k req | server CPU ms/1k req | valid |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        v = row.variant
        if row.skipped:
            lines.append(f"| {v.name} | skipped | | | | | | | | | {row.skipped} |")
            continue
        runs = row.ok_runs
        if not runs:
            lines.append(f"| {v.name} | failed | | | | | | | | | {_cell(row.error or '?', 240)} |")
            continue
        rps = [r.rps for r in runs]
        rs = ratios(row, by_name)
        ratio = f"{statistics.median(rs):.2f}" if rs and v.baseline else ("1.00" if not v.baseline else "-")
        target = "-"
        if v.target is not None:
            met = bool(rs) and statistics.median(rs) >= v.target
            target = f">= {v.target:.2f} ({'met' if met else 'not met'})"
        n = sum(r.requests for r in runs)
        counts = f"{sum(r.count('200') for r in runs)} / {sum(r.count('429') for r in runs)} / " + str(
            sum(r.other for r in runs)
        )
        fb_values = [r.fallbacks for r in runs]
        err_values = [r.backend_errors for r in runs]
        if any(x is None for x in fb_values):
            fallbacks = "n/a (peer)"
        else:
            fallbacks = str(sum(x or 0 for x in fb_values))
            errs = sum(x or 0 for x in err_values)
            if errs:
                fallbacks += f" (+{errs} backend errors)"
        cmds = sum(r.redis_cmds for r in runs) / n if n else float("nan")
        redis_cpu = statistics.median(_per_1k(r.redis_cpu, r.requests) for r in runs)
        server_cpu = statistics.median(_per_1k(r.server_cpu, r.requests) for r in runs)
        partial = "" if len(runs) == len(row.runs) else f" ({len(row.runs) - len(runs)} runs failed)"
        rps_cells = f"{_fmt_int(statistics.median(rps))} | {_fmt_int(min(rps))}-{_fmt_int(max(rps))}"
        lines.append(
            f"| {v.name} | {rps_cells} | {ratio} | {target} | {counts} | {fallbacks} | {cmds:.2f} "
            f"| {redis_cpu:.1f} | {server_cpu:.1f} | {validity(row)}{partial} |"
        )
    return lines


def cpu_table(family: str, rows: list[Row]) -> list[str]:
    lines = [
        f"CPU per request and latency ({family}; medians over rounds; 'unattributed' is machine CPU "
        f"not spent by the server, Redis, the load generator or the harness, in % of {NCPU} cores):",
        "",
        "| variant | server ms/1k | redis ms/1k | load gen ms/1k | unattributed % | redis scripts/req "
        "| p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        runs = row.ok_runs
        if row.skipped or not runs:
            continue

        def med(values: list[float]) -> float:
            return statistics.median(values) if values else float("nan")

        def per(attr: str, runs: list[Run] = runs) -> float:
            return med([_per_1k(getattr(r, attr), r.requests) for r in runs])

        foreign = med([r.noise for r in runs])
        p50 = med([r.p50_ms for r in runs if r.p50_ms is not None])
        p99 = med([r.p99_ms for r in runs if r.p99_ms is not None])
        lat = (f"{p50:.1f}", f"{p99:.1f}") if runs[0].p50_ms is not None else ("-", "-")
        cpu_cells = f"{per('server_cpu'):.1f} | {per('redis_cpu'):.1f} | {per('load_cpu'):.1f}"
        n = sum(r.requests for r in runs)
        scripts = sum(r.redis_scripts for r in runs) / n if n else float("nan")
        lines.append(
            f"| {row.variant.name} | {cpu_cells} | {foreign:.0f} | {scripts:.3f} | {lat[0]} | {lat[1]} |"
        )
    return lines


def describe(rows: list[Row]) -> list[str]:
    return [f"- `{r.variant.name}`: {r.variant.description}" for r in rows]


# ------------------------------------------------------------------------------ main


def code_identity(package_dir: Path) -> str:
    """Which code is measured: a digest of ratelimit/ and lua/, and the git state of a checkout."""
    import hashlib

    digest = hashlib.sha256()
    for sub in ("ratelimit", "lua"):
        for f in sorted((package_dir / sub).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".lua"):
                digest.update(str(f.relative_to(package_dir)).encode() + b"\0" + f.read_bytes())
    text = f"ratelimit from {package_dir} (sources sha256 {digest.hexdigest()[:12]})"
    if package_dir == _ROOT and (_ROOT / ".git").exists():
        git = ["git", "-C", str(_ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "ratelimit", "lua"], capture_output=True, text=True
        )
        state = "with uncommitted changes" if dirty.stdout.strip() else "clean"
        text += f", git HEAD {head.stdout.strip()} {state} in ratelimit/ and lua/"
    return text


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def family_skip_reason(family: str, env: Env) -> str | None:
    if family in ("asgi", "wsgi") and shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install -y wrk)"
    if family == "grpc":
        if importlib.util.find_spec("grpc") is None:
            return "grpcio is not installed"
        if not (_ROOT / "examples" / "grpc" / "shop_pb2_grpc.py").exists():
            return "examples/grpc/shop_pb2_grpc.py is missing"
    return None


def measure_with_retries(env: Env, v: Variant, label: str) -> Run:
    """One run of ``v``, repeated (at most ``--noise-retries`` times) while the machine was busy elsewhere."""
    a = env.args
    for attempt in range(a.noise_retries + 1):
        try:
            run = measure(env, v)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            run = Run(error=f"{type(exc).__name__}: {exc}")
            print(f"run: {label} {v.name}: FAILED {run.error}", flush=True)
            return run
        fb = "n/a" if run.fallbacks is None else f"{run.fallbacks}+{run.backend_errors} err"
        noisy = run.noise > a.noise_limit
        retry = noisy and attempt < a.noise_retries
        print(
            f"run: {label} {v.name}: {run.rps:,.0f} req/s, "
            f"statuses {run.statuses} unanswered {run.unanswered}, fallbacks {fb}, "
            f"redis {run.redis_cmds / max(run.requests, 1):.2f} cmds/req "
            f"{_per_1k(run.redis_cpu, run.requests):.1f} ms/1k, "
            f"server {_per_1k(run.server_cpu, run.requests):.1f} ms/1k, "
            f"load {_per_1k(run.load_cpu, run.requests):.1f} ms/1k, unattributed {run.noise:.0f}%"
            + (" NOISY: discarded, measuring again" if retry else " NOISY: kept" if noisy else ""),
            flush=True,
        )
        if not retry:
            return run
        time.sleep(a.noise_pause)
    raise AssertionError("unreachable")


def run_family(env: Env, family: str, variants: list[Variant]) -> list[Row]:
    a = env.args
    rows = [Row(v) for v in variants]
    for row in rows:
        v = row.variant
        missing = missing_modules(v)
        if missing:
            row.skipped = f"not installed: {', '.join(missing)}"
        elif v.needs_redis and env.redis is None:
            row.skipped = "needs Redis: no redis-server on PATH and no --redis-url"
        if row.skipped:
            print(f"note: {family}/{v.name} skipped: {row.skipped}", flush=True)
    active = [r for r in rows if not r.skipped]
    for rnd in range(a.rounds):
        shift = rnd % len(active) if active else 0
        order = active[shift:] + active[:shift]
        for row in order:
            row.runs[rnd] = measure_with_retries(env, row.variant, f"{family} round {rnd + 1}/{a.rounds}")
    return rows


@contextlib.contextmanager
def redis_for(args: argparse.Namespace, needed: bool) -> Iterator[RedisProbe | None]:
    if not needed:
        yield None
        return
    if args.redis_url:
        probe = RedisProbe(args.redis_url, flush=False)
        try:
            yield probe
        finally:
            probe.close()
        return
    if redis_server_binary() is None:
        print("note: no redis-server on PATH (and no --redis-url): Redis rows are skipped", flush=True)
        yield None
        return
    with redis_server() as url:
        probe = RedisProbe(url, flush=True)
        try:
            yield probe
        finally:
            probe.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for v in VARIANTS:
            missing = missing_modules(v)
            flags = [
                f"target >= {v.target}" if v.target else "",
                "redis" if v.needs_redis else "",
                "peer" if v.peer else "",
            ]
            extra = ", ".join(f for f in flags if f)
            state = f" [missing: {', '.join(missing)}]" if missing else ""
            print(f"{v.family:5} {v.name:24} {v.description}{f' ({extra})' if extra else ''}{state}")
        return 0
    plan = selected(args)
    NOISE_LIMIT[0] = args.noise_limit
    TITLES["asgi"] = f"ASGI behind uvicorn ({args.uvicorn_loop} + httptools, 1 worker), wrk load"

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    needs_redis = any(v.needs_redis and not missing_modules(v) for vs in plan.values() for v in vs)
    started = datetime.datetime.now(datetime.timezone.utc)
    all_rows: dict[str, list[Row]] = {}
    failed_own = False
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as tmp, redis_for(args, needs_redis) as redis:
        env = Env(args, Path(tmp), redis)
        help_text = ""
        if "wsgi" in plan and importlib.util.find_spec("gunicorn") is not None:
            help_text = subprocess.run(
                [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, cwd=tmp
            ).stdout
        if "--no-control-socket" in help_text:
            env.gunicorn_flags.append("--no-control-socket")  # gunicorn >= 24 would create one in cwd
        print(f"# bench_servers: {started:%Y-%m-%d %H:%M} UTC", flush=True)
        print(
            f"python {platform.python_version()}, {NCPU} CPUs, loadavg {os.getloadavg()[0]:.2f}; "
            f"uvicorn {_version('uvicorn')}, uvloop {_version('uvloop')}, httptools {_version('httptools')}, "
            f"starlette {_version('starlette')}, gunicorn {_version('gunicorn')}, flask {_version('flask')}, "
            f"grpcio {_version('grpcio')}, redis-py {_version('redis')}, ambient-ratelimit "
            f"{_version('ambient-ratelimit')}; redis-server "
            f"{redis_version(redis.url) if redis else '-'}; wrk -t1 -c{args.connections}",
            flush=True,
        )
        print(code_identity(args.package_dir), flush=True)
        print(
            f"rounds {args.rounds}, {args.duration:g} s measured + {args.warmup:g} s warm-up per run, "
            f"{args.subjects} subjects, rate {args.rate} (deny-path {args.deny_rate})",
            flush=True,
        )
        for family, variants in plan.items():
            reason = family_skip_reason(family, env)
            if reason is not None:
                print(f"note: family {family} skipped: {reason}", flush=True)
                continue
            all_rows[family] = run_family(env, family, variants)
        profile_text = profile_variant(env, args.profile) if args.profile else None
    print()
    print(f"## Results ({started:%Y-%m-%d %H:%M} UTC)")
    for family, rows in all_rows.items():
        print()
        print("\n".join(family_table(family, rows)))
        print()
        print("\n".join(cpu_table(family, rows)))
        print()
        print("\n".join(describe(rows)))
        for row in rows:
            if not row.skipped and not row.variant.peer and row.error:
                failed_own = True
            if not row.skipped and validity(row).startswith("INVALID") and row.ok_runs:
                print(f"warning: {row.variant.name}: {validity(row)}: not a measurement of real decisions")
    if profile_text:
        print()
        print(profile_text)
    return 1 if failed_own else 0


def profile_variant(env: Env, name: str) -> str:
    """One more run of ``name`` with its server under cProfile: the top functions by own time."""
    import io
    import pstats

    v = BY_NAME[name]
    out = env.workdir / f"profile-{name}.prof"
    try:
        run = measure(env, v, profile=out)
    except Exception as exc:
        return f"profile of {name}: run failed: {exc}"
    if not out.exists():
        return f"profile of {name}: the server wrote no profile"
    buf = io.StringIO()
    stats = pstats.Stats(str(out), stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(env.args.profile_top)
    head = (
        f"## Profile of {name} (server under cProfile, so slower: {run.rps:,.0f} req/s; "
        f"{run.requests} requests; main thread only for threaded servers)"
    )
    return head + "\n\n```\n" + buf.getvalue().strip() + "\n```"


if __name__ == "__main__":
    sys.exit(main())
