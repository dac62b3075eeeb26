"""The ``llm-router`` command line.

Every command prints one clear line and exits non-zero on failure; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import trio

from providers import LLMError

__all__ = ["main"]


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-router",
        description="An LLM provider router for trio. Try `llm-router demo`.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="show the adapters at work against the built-in fake upstream (no keys, no network)",
    )
    demo.add_argument(
        "--speed",
        type=_non_negative,
        default=1.0,
        help="latency multiplier for the simulated providers (0 = instant; default 1)",
    )

    upstream = sub.add_parser(
        "upstream",
        help="run the fake upstream (OpenAI and Anthropic wire formats) until interrupted",
    )
    upstream.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    upstream.add_argument(
        "--port", type=_port, default=8080, help="port to bind (0 = any free port)"
    )
    upstream.add_argument(
        "--scenario",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with [scenarios.NAME] tables (latency, faults, replies)",
    )
    upstream.add_argument("--seed", type=int, default=0, help="seed for latency and fault draws")

    simulate = sub.add_parser(
        "simulate",
        help="compare routing policies on a scenario, in virtual time (deterministic)",
    )
    simulate.add_argument(
        "scenario",
        nargs="?",
        type=Path,
        default=None,
        help="scenario TOML file (default: the shipped Tail-at-Scale scenario)",
    )
    simulate.add_argument(
        "--requests", type=_positive_int, default=None, help="requests per policy"
    )
    simulate.add_argument("--seed", type=int, default=None, help="seed (default: the scenario's)")
    simulate.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this policy (repeatable)",
    )
    simulate.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON"
    )
    bench = sub.add_parser(
        "bench", help="measure the router: overhead, loopback HTTP, hedging, scale, cold start"
    )
    bench.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="benchmarks to run: overhead, loopback, hedging, scale, coldstart (default: all)",
    )
    bench.add_argument("--quick", action="store_true", help="a tenth of the work: a smoke test")
    bench.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON"
    )
    return parser


def _bench(args: argparse.Namespace) -> int:
    import msgspec

    from ._bench import BENCHMARKS, run_benchmarks

    results = run_benchmarks(tuple(args.names) or BENCHMARKS, quick=args.quick)
    if args.json is not None:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(results)) + b"\n")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _simulate(args: argparse.Namespace) -> int:
    from ._simulate import format_results, load_scenario, simulate

    scenario = load_scenario(args.scenario)
    results = simulate(scenario, requests=args.requests, seed=args.seed, policies=args.policy)
    print(format_results(scenario, results))
    if args.json is not None:
        import msgspec

        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(results)) + b"\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llm-router`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            trio.run(run_demo, args.speed)
        elif args.command == "upstream":
            return _upstream(args)
        elif args.command == "simulate":
            return _simulate(args)
        elif args.command == "bench":
            return _bench(args)
    except BaseException as exc:
        # trio's nurseries wrap what escapes them in exception groups: look inside, so
        # Ctrl-C and expected failures (a bad file, a port in use) stay one clear line.
        error = _sole_error(exc)
        if isinstance(error, KeyboardInterrupt):
            return 130
        if isinstance(error, LLMError | OSError | ValueError) and not args.debug:
            print(f"llm-router: error: {error}", file=sys.stderr)
            return 1
        raise
    return 0


def _sole_error(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _upstream(args: argparse.Namespace) -> int:
    from providers.testing import load_scenarios, open_fake_upstream

    scenarios = load_scenarios(args.scenario) if args.scenario else {}

    async def serve() -> None:
        async with open_fake_upstream(
            scenarios, host=args.host, port=args.port, seed=args.seed, record=False
        ) as upstream:
            url = upstream.url
            names = ", ".join(sorted(scenarios)) or "(none: every name gets the default echo)"
            print(f"fake upstream listening on {url}", flush=True)
            print(f"  scenarios: {names}")
            print(f"  OpenAI base URL:    {url}/<scenario>/v1")
            print(f"  Anthropic base URL: {url}/<scenario>")
            print("  Ctrl-C to stop", flush=True)
            await trio.sleep_forever()

    if threading.current_thread() is not threading.main_thread():
        trio.run(serve)
        return 0
    # "Ctrl-C to stop" must hold even when a parent started us with SIGINT ignored
    # (a background job of a non-interactive shell, some process supervisors).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        trio.run(serve)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
