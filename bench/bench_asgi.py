"""ASGI throughput of ambient-ratelimit next to a bare app and to other rate limiters.

Drives each variant in-process (no sockets) with 64 concurrent requests over 500
subjects, interleaves the variants over several rounds and prints the median. See
bench/README.md for what the variants are and how to read the table.

    python bench/bench_asgi.py                      # everything installed, defaults
    python bench/bench_asgi.py --quick --variants bare,ambient-memory
    python bench/bench_asgi.py --profile ambient-redis
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave no __pycache__ in bench/ (nothing written to the repo)
# Measure the working tree: the repository root (for `ratelimit`) and bench/ itself
# (for the helper modules) come first on the import path.
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _apps import (  # noqa: E402
    BASELINES,
    VARIANTS,
    VARIANTS_BY_NAME,
    BenchContext,
    BuiltApp,
    Variant,
)
from _driver import RunResult, VariantResult, drive  # noqa: E402
from _redis import ZERO_COUNTS, CommandCounts, CommandStats, redis_server, redis_version  # noqa: E402

TABLE_TITLE = "ASGI in-process benchmark"


@dataclass
class Settings:
    """Command-line settings."""

    requests: int
    warmup: int
    rounds: int
    concurrency: int
    subjects: int
    cmdstats: bool
    redis_url: str | None
    profile_top: int = 15


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    names = ", ".join(v.name for v in VARIANTS)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--requests",
        type=int,
        default=20_000,
        help="measured requests per variant per round (default 20000)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up requests per variant per round (default: 10%% of --requests, at least 200)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, variants interleaved; the median is reported (default 3)",
    )
    p.add_argument("--concurrency", type=int, default=64, help="concurrent in-flight requests (default 64)")
    p.add_argument("--subjects", type=int, default=500, help="distinct x-user-id values (default 500)")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of: {names} (default: all)")
    p.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis instead of starting a private redis-server",
    )
    p.add_argument("--no-cmdstats", action="store_true", help="do not read INFO commandstats")
    p.add_argument("--quick", action="store_true", help="smoke-test size: 500 requests, 100 warm-up, 1 round")
    p.add_argument(
        "--profile",
        metavar="VARIANT",
        default=None,
        help="instead of the table, cProfile one run of VARIANT and print the top functions",
    )
    p.add_argument(
        "--profile-top", type=int, default=15, help="functions to print with --profile (default 15)"
    )
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.rounds = 500, 1
        if args.warmup is None:
            args.warmup = 100
    if args.warmup is None:
        args.warmup = max(200, args.requests // 10)
    if args.requests < 1 or args.rounds < 1 or args.concurrency < 1 or args.subjects < 1:
        p.error("--requests, --rounds, --concurrency and --subjects must be positive")
    return args


def select_variants(spec: str | None) -> list[Variant]:
    """The variants named in ``spec`` (all when None), plus the baselines they need."""
    if spec is None:
        return list(VARIANTS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in VARIANTS_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(unknown)}; try --list")
    chosen = set(wanted)
    for name in wanted:
        baseline = BASELINES[VARIANTS_BY_NAME[name].framework]
        if baseline not in chosen:
            print(f"note: adding {baseline!r}, the baseline of {name!r}")
            chosen.add(baseline)
    return [v for v in VARIANTS if v.name in chosen]


def drop_unavailable(variants: list[Variant]) -> list[Variant]:
    """Skip (with a printed note) the variants whose packages are not installed."""
    kept = []
    for v in variants:
        missing = v.missing()
        if missing:
            print(f"skip {v.name}: not installed: {', '.join(missing)}")
        else:
            kept.append(v)
    return kept


async def build_all(variants: list[Variant], ctx: BenchContext) -> dict[str, BuiltApp]:
    """Build every variant's app; a peer that fails to build is skipped with a note."""
    built: dict[str, BuiltApp] = {}
    for v in variants:
        try:
            built[v.name] = await v.build(ctx)
        except Exception as exc:
            if not v.peer:
                raise
            print(f"skip {v.name}: failed to build: {type(exc).__name__}: {exc}")
            continue
        for note in built[v.name].notes:
            print(f"note: {v.name}: {note}")
    return built


async def run_one(
    v: Variant, app: BuiltApp, n: int, s: Settings, stats: CommandStats | None
) -> tuple[RunResult, CommandCounts, int]:
    """One run of ``n`` requests: its result, Redis command delta and fallback count."""
    before = await asyncio.to_thread(stats.snapshot) if stats else ZERO_COUNTS
    fallbacks_before = app.fallbacks()
    result = await drive(
        app.app,
        n,
        concurrency=s.concurrency,
        n_subjects=s.subjects,
        single_subject=v.single_subject,
    )
    fallbacks = app.fallbacks() - fallbacks_before
    after = await asyncio.to_thread(stats.snapshot) if stats else ZERO_COUNTS
    return result, after - before, fallbacks


async def benchmark(variants: list[Variant], s: Settings) -> list[VariantResult[Variant]]:
    """Build the apps, run the interleaved rounds, close the apps."""
    ctx = BenchContext(redis_url=s.redis_url)
    built = await build_all(variants, ctx)
    results = {v.name: VariantResult(v) for v in variants if v.name in built}
    stats = CommandStats(s.redis_url) if (s.cmdstats and s.redis_url) else None
    try:
        for rnd in range(s.rounds):
            # Rotate the order every round so no variant always runs first/last.
            names = list(results)
            k = rnd % len(names) if names else 0
            for name in names[k:] + names[:k]:
                res = results[name]
                if res.error is not None:
                    continue
                try:
                    await run_one(res.variant, built[name], s.warmup, s, None)
                    run, cmds, fallbacks = await run_one(res.variant, built[name], s.requests, s, stats)
                except Exception as exc:
                    if not res.variant.peer:
                        raise
                    res.error = f"{type(exc).__name__}: {exc}"
                    print(f"note: {name} failed in round {rnd + 1}: {res.error}")
                    continue
                res.runs.append(run)
                res.commands = res.commands + cmds
                res.fallbacks += fallbacks
                print(
                    f"  round {rnd + 1}/{s.rounds}  {name:<22} {run.rps:>10,.0f} req/s",
                    flush=True,
                )
    finally:
        if stats:
            stats.close()
        for name, b in built.items():
            try:
                await b.close()
            except Exception as exc:  # closing must not hide the results
                print(f"note: closing {name}: {type(exc).__name__}: {exc}")
    return list(results.values())


def _ratio(res: VariantResult[Variant], by_name: dict[str, VariantResult[Variant]]) -> float | None:
    """Median over rounds of (variant req/s / its bare app's req/s in the same round)."""
    base = by_name.get(BASELINES[res.variant.framework])
    if base is None or not base.runs or not res.runs:
        return None
    # Both lists are in round order; a peer that failed stops early, so zip() pairs rounds.
    ratios = [r.rps / b.rps for r, b in zip(res.runs, base.runs, strict=False) if b.rps > 0]
    return statistics.median(ratios) if ratios else None


def format_table(results: list[VariantResult[Variant]], s: Settings) -> str:
    """The result table, as printed."""
    by_name = {r.variant.name: r for r in results}
    header = (
        f"{'variant':<22} {'req/s':>10} {'range':>17} {'vs bare':>8} "
        f"{'cmds/req':>9} {'scripts/req':>12} {'429s':>7}"
    )
    lines = [TABLE_TITLE, header, "-" * len(header)]
    for r in results:
        if not r.runs:
            lines.append(f"{r.variant.name:<22} {'failed: ' + (r.error or 'no run')}")
            continue
        lo = min(x.rps for x in r.runs)
        hi = max(x.rps for x in r.runs)
        ratio = _ratio(r, by_name)
        if s.cmdstats and s.redis_url and r.requests:
            cmds = f"{r.commands.total / r.requests:9.3f}"
            scripts = f"{r.commands.scripts / r.requests:12.3f}"
        else:
            cmds, scripts = f"{'-':>9}", f"{'-':>12}"
        lines.append(
            f"{r.variant.name:<22} {r.median_rps:>10,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17} "
            f"{(f'{ratio:.3f}' if ratio is not None else '-'):>8} {cmds} {scripts} "
            f"{r.denied_share:>7.1%}"
        )
    return "\n".join(lines)


def describe(s: Settings, redis_version: str | None) -> str:
    """One paragraph on how the numbers were made."""
    return (
        f"{s.requests} requests/variant/round, {s.warmup} warm-up, {s.rounds} round(s), "
        f"concurrency {s.concurrency}, {s.subjects} subjects; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, asyncio default loop"
        + (f", redis-server {redis_version}" if redis_version else "")
        + ". req/s: median over rounds; vs bare: median of per-round ratios to the same "
        "framework's bare app; cmds/req: all Redis commands (script-internal ones included) "
        "per request; scripts/req: EVAL/EVALSHA/FCALL per request."
    )


async def profile_variant(v: Variant, s: Settings) -> str:
    """cProfile one measured run of ``v``; return the top functions by tottime."""
    ctx = BenchContext(redis_url=s.redis_url)
    built = await v.build(ctx)
    try:
        await run_one(v, built, s.warmup, s, None)
        prof = cProfile.Profile()
        prof.enable()
        run, _, _ = await run_one(v, built, s.requests, s, None)
        prof.disable()
    finally:
        await built.close()
    out = io.StringIO()
    out.write(f"profile of {v.name}: {run.requests} requests, {run.rps:,.0f} req/s under cProfile\n")
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("tottime").print_stats(s.profile_top)
    out.write("the same profile, functions of the ratelimit package only:\n")
    st.print_stats(r"[/\\]ratelimit[/\\]", s.profile_top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if args.list:
        for v in VARIANTS:
            print(f"{v.name:<22} {v.description}")
        return 0
    if args.profile:
        if args.profile not in VARIANTS_BY_NAME:
            raise SystemExit(f"unknown variant: {args.profile}; try --list")
        variants = [VARIANTS_BY_NAME[args.profile]]
    else:
        variants = select_variants(args.variants)
    variants = drop_unavailable(variants)
    if not variants:
        print("nothing to run")
        return 1
    s = Settings(
        requests=args.requests,
        warmup=args.warmup,
        rounds=args.rounds,
        concurrency=args.concurrency,
        subjects=args.subjects,
        cmdstats=not args.no_cmdstats,
        redis_url=args.redis_url,
        profile_top=args.profile_top,
    )
    with contextlib.ExitStack() as stack:
        if any(v.needs_redis for v in variants) and s.redis_url is None:
            s.redis_url = stack.enter_context(redis_server())
        version = redis_version(s.redis_url) if s.redis_url else None
        if args.profile:
            print(asyncio.run(profile_variant(variants[0], s)))
            return 0
        print(describe(s, version), flush=True)
        results = asyncio.run(benchmark(variants, s))
    print()
    print(format_table(results, s))
    for r in results:
        odd = r.unexpected_statuses
        if odd:
            print(f"warning: {r.variant.name}: unexpected statuses {odd}")
        if r.fallbacks:
            share = r.fallbacks / r.requests if r.requests else 1.0
            verdict = (
                "these numbers do not measure the backend"
                if share > 0.01
                else "too few to matter for the numbers"
            )
            print(
                f"warning: {r.variant.name}: {r.fallbacks} of {r.requests} measured decisions "
                f"came from the failure policy (Redis failed or missed the timeout budget); "
                f"{verdict}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
