"""The ``ratelimit`` command line: demo, check, migrate, inspect and serve."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from .demo import REDIS_HELP, DemoError, rate_limit_headers, run_demo, tightest

__all__ = ["main", "rate_limit_headers", "tightest"]

_EPILOG = """examples:
  ratelimit demo                                   see limits at work (no Redis needed)
  ratelimit check limits.yaml                      validate a config, print its rules
  ratelimit check -e REDIS_URL=redis://r:6379/0 limits.yaml   ... filling ${REDIS_URL}
  ratelimit migrate envoyfilter.yaml ratelimit-configmap.yaml -o limits.yaml
  ratelimit inspect limits.yaml alice              alice's current usage, per rule
  ratelimit serve limits.yaml                      an envoyproxy/ratelimit drop-in on ports 8081/8080

docs: docs/index.md (configuration: docs/configuration.md)"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratelimit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ambient-ratelimit: sliding-window rate limiting backed by Redis,\n"
        "for services that lost Envoy's rate limits under Istio Ambient.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="serve an example app and show allowed, then limited, requests (memory backend)",
        description="Serve a small app on the loopback and show what its clients get (200s, then 429,"
        " with RateLimit headers); then the limiter up close: several limits all or nothing, cost,"
        " and the sliding window over time. Memory backend and simulated clock unless --redis.",
    )
    demo.add_argument("--redis", metavar="URL", help=REDIS_HELP)
    check = commands.add_parser(
        "check",
        help="validate config files and print their effective rules",
        description="Validate each config file (docs/configuration.md) and print its effective rules."
        " Every error is reported with its file, line and field; exit status 1 if any file is invalid.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable the file reads with ${NAME} (e.g. -e REDIS_URL=redis://r:6379/0)",
    )
    migrate = commands.add_parser(
        "migrate",
        help="translate EnvoyFilter + ratelimit ConfigMap manifests into a config file",
        description="Read Istio EnvoyFilter manifests (global and local rate limits), envoyproxy/ratelimit"
        " ConfigMaps and RequestAuthentications (single- or multi-document YAML) and write an equivalent"
        " config file. What cannot be translated is reported by name on stderr.",
    )
    migrate.add_argument("files", nargs="+", metavar="FILE")
    migrate.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    inspect = commands.add_parser(
        "inspect",
        help="show a subject's current usage under each rule of a config",
        description="Peek (count nothing) at the counters of IDENTITY under each rule of the config file,"
        " on the config's backend or --storage. IDENTITY is what the rule's key produces (a subject, an IP);"
        " for an envoy domain, its request descriptor: key=value,key=value.",
    )
    inspect.add_argument("config", metavar="CONFIG")
    inspect.add_argument("identity", metavar="IDENTITY")
    inspect.add_argument("--storage", metavar="URL", help="Redis URL to read instead of the config's backend")
    inspect.add_argument("--rule", metavar="NAME", help="only this rule")
    inspect.add_argument("--tier", metavar="VALUE", help="the identity's tier, for rules with tiers")
    serve = commands.add_parser(
        "serve",
        help="run an envoyproxy/ratelimit compatible gRPC service on this package's engine",
        description="Answer Envoy's RateLimitService/ShouldRateLimit from CONFIG's envoy domains (a config"
        " file, an envoyproxy/ratelimit service config, or a directory of them), on the counters an app"
        " using the same file shares. Ports and Redis come from the flags or upstream's environment"
        " variables (GRPC_PORT, HTTP_PORT, REDIS_URL, ...; see docs/serve.md). Runs until SIGTERM or SIGINT.",
    )
    serve.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="config file or directory (default: $RUNTIME_ROOT/$RUNTIME_SUBDIRECTORY/$RUNTIME_APPDIRECTORY)",
    )
    serve.add_argument("--grpc-port", type=int, metavar="N", help="gRPC port (default $GRPC_PORT or 8081)")
    serve.add_argument(
        "--http-port", type=int, metavar="N", help="HTTP port (default $HTTP_PORT, $PORT or 8080)"
    )
    serve.add_argument("--workers", type=int, metavar="N", help="processes sharing the ports (default 1)")
    serve.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, wait this long for calls in flight (default 15)",
    )
    serve.add_argument(
        "--reload", type=float, metavar="SECONDS", help="check the config for changes this often (default 2)"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        try:
            return run_demo(args.redis)
        except DemoError as exc:
            print(f"ratelimit demo: error: {exc}", file=sys.stderr)
            return 1
    if args.command == "check":
        from .config import run_check

        for pair in args.env:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                print(f"ratelimit check: error: --env takes NAME=VALUE, got {pair!r}", file=sys.stderr)
                return 2
            os.environ[name] = value
        return run_check(args.files)
    if args.command == "serve":
        return _serve(args)
    if args.command == "inspect":
        from .config import run_inspect

        return run_inspect(args.config, args.identity, args.storage, args.rule, args.tier)
    try:
        from ..migrate import cli
    except ImportError as exc:
        print(f"ratelimit migrate: error: {exc}", file=sys.stderr)
        return 1
    return cli(args.files, args.output)


def _serve(args: argparse.Namespace) -> int:
    try:
        from ..serve import ServeSettings, SettingsError, run
    except ImportError as exc:
        print(
            f"ratelimit serve: error: {exc}; install it with: pip install 'ambient-ratelimit[serve]'",
            file=sys.stderr,
        )
        return 1
    try:
        settings = ServeSettings.from_env(
            args.config,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            workers=args.workers,
            grace=args.grace,
            reload=args.reload,
        )
    except SettingsError as exc:
        print(f"ratelimit serve: error: {exc}", file=sys.stderr)
        return 2
    return run(settings)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version (0), usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _run(args)
    except BrokenPipeError:  # `ratelimit demo | head`: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
