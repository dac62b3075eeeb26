"""The ``llm-router`` command line.

Every command prints one clear line and exits non-zero on failure; ``--debug`` shows the
traceback instead.

======  ===================================================================
status  meaning
======  ===================================================================
0       done (``health``: every provider healthy or degraded)
1       an error: configuration, a missing key, a provider, a file, a port
2       a usage error (bad flags, no prompt): argparse's message
3       ``health``: at least one provider is unhealthy
130     interrupted (Ctrl-C)
======  ===================================================================

The ``chat``, ``health`` and ``models`` commands live in :mod:`router._tools._commands`;
``python -m router`` runs :func:`main` as the console script does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from providers import LLMError

from ._format import table_lines

__all__ = ["main"]

T = TypeVar("T")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _temperature(text: str) -> float:
    value = _non_negative(text)
    if value > 2:
        raise argparse.ArgumentTypeError(f"expected a temperature from 0 to 2, got {text!r}")
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
        help="hedging against plain fallback, live, on the built-in fake upstream (no keys)",
    )
    demo.add_argument(
        "--speed",
        type=_non_negative,
        default=1.0,
        help="latency multiplier for the simulated providers (0 = instant; default 1)",
    )
    demo.add_argument(
        "--requests",
        type=_positive_int,
        default=300,
        metavar="N",
        help="requests through each route (default 300)",
    )
    demo.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="write a latency CDF of both routes (needs the 'plot' extra: matplotlib)",
    )

    upstream = sub.add_parser(
        "upstream",
        help="run the fake upstream (every vendor's wire format) until interrupted",
        description="Run the fake upstream until interrupted: one HTTP server speaking\n"
        "every wire format below, with each scenario's latency and faults.\n"
        "URL is the address it prints when it starts.",
        epilog=_upstream_formats(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    _add_router_commands(sub)
    bench = sub.add_parser(
        "bench",
        help="measure the router: overhead, loopback HTTP, hedging, scale, cold start, "
        "gateway, shared limits on Redis",
    )
    bench.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=(
            "benchmarks to run: overhead, loopback, hedging, scale, coldstart, gateway, "
            "shared (default: all)"
        ),
    )
    bench.add_argument("--quick", action="store_true", help="a tenth of the work: a smoke test")
    bench.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON"
    )
    _add_chaos_command(sub)
    _add_serve_command(sub)
    _add_key_command(sub)
    return parser


def _add_key_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``key hash`` / ``key new``: gateway keys (``_gateway_keys``)."""
    key = sub.add_parser(
        "key",
        help="make a gateway key, or hash one for [gateway.keys.NAME] key_sha256",
        description="Gateway keys (docs/gateway.md, 'Keys'). 'key new' prints a fresh "
        "random key and its sha256; 'key hash' reads a key from standard input (never "
        "from the command line, where other users and the shell history see it) and "
        "prints its sha256, for key_sha256 in the config.",
    )
    actions = key.add_subparsers(dest="key_command", metavar="{new,hash}", required=True)
    actions.add_parser("new", help="print a new random key and its sha256")
    actions.add_parser("hash", help="print the sha256 of the key read from standard input")


def _add_serve_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``serve``: the OpenAI- and Anthropic-compatible gateway (``_serve``, ``_gateway``)."""
    serve = sub.add_parser(
        "serve",
        help="an OpenAI- and Anthropic-compatible HTTP gateway over the router",
        description="Serve the router over HTTP: OpenAI's /v1/chat/completions, "
        "/v1/embeddings and /v1/models, Anthropic's /v1/messages, /healthz, /readyz and "
        "/metrics, on hypercorn's trio worker. Without --config it serves the built-in "
        "fake providers (no keys, no network). SIGTERM or Ctrl-C drains in-flight "
        "requests for [gateway] grace seconds; a second one stops at once. "
        "See docs/gateway.md.",
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="router config (TOML) with an optional [gateway] table; "
        "default: the built-in fake providers",
    )
    serve.add_argument(
        "--host",
        default=None,
        help="address to bind (default: [gateway] host, 127.0.0.1); loopback only "
        "until gateway keys are configured",
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=None,
        help="port to bind (default: [gateway] port, 4000; 0 = any free port)",
    )


def _add_chaos_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``chaos``: the fault mix against the router, checking its guarantees (``_chaos``)."""
    chaos = sub.add_parser(
        "chaos",
        help="a seeded fault mix against the router; exit 1 if any guarantee fails",
        description="Send a seeded mix of faulty requests through a real router (fake "
        "upstream, hostile loopback server, crashing adapters) with cancellation injected "
        "at each stage, then check every guarantee of docs/reliability.md.",
    )
    chaos.add_argument(
        "--requests", type=_positive_int, default=1000, metavar="N", help="requests (default 1000)"
    )
    chaos.add_argument("--seed", type=int, default=0, help="seed of the mix (default 0)")
    chaos.add_argument(
        "--world",
        choices=("wire", "mock"),
        default="wire",
        help="wire: loopback sockets (default); mock: MockProviders on a virtual clock",
    )
    chaos.add_argument(
        "--fault",
        action="append",
        default=None,
        metavar="NAME",
        help="only this fault (repeatable)",
    )
    chaos.add_argument(
        "--stage",
        action="append",
        default=None,
        metavar="NAME",
        help="only this cancellation stage (repeatable)",
    )
    chaos.add_argument(
        "--parallel", type=_positive_int, default=16, metavar="N", help="concurrent callers"
    )
    chaos.add_argument(
        "--deadline", type=_positive, default=None, metavar="SECONDS", help="per request"
    )
    chaos.add_argument(
        "--slack", type=_non_negative, default=None, metavar="SECONDS", help="allowed lateness"
    )
    chaos.add_argument(
        "--max-rss-growth",
        type=_non_negative,
        default=64.0,
        metavar="MIB",
        help="RSS growth after the warm-up that fails the run (default 64)",
    )
    chaos.add_argument(
        "--tracemalloc", action="store_true", help="also trace Python allocations (slower)"
    )
    chaos.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of the table"
    )


def _chaos(args: argparse.Namespace) -> int:
    import msgspec

    from ._chaos import format_report, run_chaos

    # --fault alone runs those faults with no injected cancellation; --stage alone runs
    # those stages and no fault mix; both: both; neither: everything.
    faults = args.fault
    stages = args.stage
    if faults is not None and stages is None:
        stages = []
    if stages is not None and faults is None:
        faults = []

    def progress(done: int) -> None:
        if not args.json and done % 1000 == 0:
            print(f"  {done} requests...", file=sys.__stderr__, flush=True)

    kwargs: dict[str, Any] = dict(
        requests=args.requests,
        seed=args.seed,
        world=args.world,
        faults=faults if faults is None else tuple(faults),
        stages=stages if stages is None else tuple(stages),
        parallel=args.parallel,
        deadline=args.deadline,
        slack=args.slack,
        max_rss_growth=args.max_rss_growth * 2**20,
        trace_memory=args.tracemalloc,
        progress=progress,
    )
    clock = None
    if args.world == "mock":
        import trio.testing

        clock = trio.testing.MockClock(autojump_threshold=0)
    report = run_chaos(clock=clock, **kwargs)
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(report)).decode())
    else:
        print(format_report(report))
    return 0 if report.passed else 1


def _add_router_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``chat``, ``health`` and ``models``: the router on a config file or the environment."""
    config_help = "router config (TOML); default: one provider per API key in the environment"
    chat = sub.add_parser(
        "chat",
        help="send one prompt; stream the answer, then say who answered and what it cost",
        description="Send one prompt through the router and stream the answer to stdout; "
        "a summary (provider, tokens, cost, attempts) goes to stderr.",
    )
    chat.add_argument(
        "-m",
        "--model",
        required=True,
        help="provider:model, a route from the config, or a bare model id (gpt-4o-mini)",
    )
    chat.add_argument(
        "prompt", nargs="?", default=None, help="the prompt; default (or '-'): read stdin"
    )
    chat.add_argument("--config", type=Path, default=None, metavar="FILE", help=config_help)
    chat.add_argument("--system", default=None, metavar="TEXT", help="a system prompt")
    chat.add_argument(
        "--max-tokens", type=_positive_int, default=None, metavar="N", help="output token cap"
    )
    chat.add_argument(
        "--temperature", type=_temperature, default=None, metavar="T", help="sampling temperature"
    )
    chat.add_argument(
        "--json",
        action="store_true",
        help="print the whole response (text, usage, cost, attempts) as JSON, not a stream",
    )

    health = sub.add_parser(
        "health",
        help="probe every configured provider at once; exit 3 if any is unhealthy",
    )
    health.add_argument("--config", type=Path, default=None, metavar="FILE", help=config_help)
    health.add_argument(
        "--deadline",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="give up on probes not answered by then (default 10)",
    )
    health.add_argument("--json", action="store_true", help="print the rows as JSON")

    models = sub.add_parser(
        "models",
        help="list the configured targets with context window and prices (no network)",
    )
    models.add_argument("--config", type=Path, default=None, metavar="FILE", help=config_help)
    models.add_argument("--json", action="store_true", help="print the rows as JSON")


def _read_prompt(parser: argparse.ArgumentParser, prompt: str | None) -> str:
    """The prompt argument, or stdin when it is absent or ``-``; empty is a usage error."""
    if prompt is None or prompt == "-":
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            prompt = ""
        else:
            if stdin.isatty():
                print("(reading the prompt from the terminal: end it with Ctrl-D)", file=sys.stderr)
            prompt = stdin.read().rstrip()
    if not prompt.strip():
        parser.error("chat: no prompt: give one as an argument or on stdin")
    return prompt


def _chat(args: argparse.Namespace, prompt: str) -> int:
    from ._commands import run_chat

    return trio.run(
        lambda: run_chat(
            args.model,
            prompt,
            config_path=args.config,
            system=args.system,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            as_json=args.json,
            out=sys.stdout,
            err=sys.stderr,
        )
    )


def _health(args: argparse.Namespace) -> int:
    from ._commands import run_health

    return trio.run(
        lambda: run_health(args.config, deadline=args.deadline, as_json=args.json, out=sys.stdout)
    )


def _models(args: argparse.Namespace) -> int:
    from ._commands import run_models

    return run_models(args.config, as_json=args.json, out=sys.stdout)


def _run_interruptibly(run: Callable[[], T]) -> T:
    """``run()`` with Ctrl-C raising KeyboardInterrupt, even if our parent ignored SIGINT.

    :func:`main` runs every command through it, so "Ctrl-C stops it, exit 130" holds for
    each.

    A background job of a non-interactive shell (and some supervisors) starts us with
    SIGINT ignored, and trio leaves an ignored SIGINT alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return run()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run()
    finally:
        signal.signal(signal.SIGINT, previous)


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
    parser = _parser()
    args = parser.parse_args(argv)
    # A route's strategy may be an import path ("mypolicies:cheapest"): resolve it from
    # the working directory, as `python -m router` does (the console script's sys.path
    # starts at its own directory instead).
    with contextlib.suppress(OSError):  # a working directory since removed: nothing to add
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
    # Read before anything starts, so an empty prompt is a usage error like a bad flag.
    prompt = _read_prompt(parser, args.prompt) if args.command == "chat" else ""
    try:
        # Every command answers Ctrl-C with exit 130, even when our parent started us
        # with SIGINT ignored.
        return _run_interruptibly(lambda: _dispatch(args, prompt))
    except BaseException as exc:
        # trio's nurseries wrap what escapes them in exception groups: look inside, so
        # Ctrl-C and expected failures (a bad file, a port in use) stay one clear line.
        error = _sole_error(exc)
        if isinstance(error, KeyboardInterrupt):
            return 130
        if isinstance(error, BrokenPipeError):
            # The reader went away (`llm-router chat ... | head -1`): not our failure.
            # Point stdout at /dev/null so the interpreter's final flush is quiet too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        if isinstance(error, LLMError | OSError | ValueError) and not args.debug:
            from ._commands import error_line

            # The router commands name the error's type; the older ones keep their format.
            typed = args.command in ("chat", "health", "models", "serve")
            print(f"llm-router: error: {error_line(error, with_type=typed)}", file=sys.stderr)
            return 1
        raise


def _dispatch(args: argparse.Namespace, prompt: str) -> int:
    """Run the command ``args`` names; its exit status."""
    if args.command == "demo":
        from ._demo import check_plot_available, run_demo

        if args.plot is not None:
            try:
                check_plot_available()
            except RuntimeError as exc:
                print(f"llm-router: error: {exc}", file=sys.stderr)
                return 1
        trio.run(functools.partial(run_demo, args.speed, requests=args.requests, plot=args.plot))
    elif args.command == "upstream":
        return _upstream(args)
    elif args.command == "simulate":
        return _simulate(args)
    elif args.command == "bench":
        return _bench(args)
    elif args.command == "chat":
        return _chat(args, prompt)
    elif args.command == "health":
        return _health(args)
    elif args.command == "models":
        return _models(args)
    elif args.command == "chaos":
        return _chaos(args)
    elif args.command == "serve":
        return _serve(args)
    elif args.command == "key":
        return _key(args)
    return 0


def _key(args: argparse.Namespace) -> int:
    from ._gateway_keys import key_sha256, new_key

    if args.key_command == "new":
        value = new_key()
        print(f"key:        {value}")
        print(f"key_sha256: {key_sha256(value)}")
        return 0
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass("gateway key (not echoed): ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value.strip():
        print("llm-router: error: no key on standard input", file=sys.stderr)
        return 1
    print(key_sha256(value.strip()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ._serve import run_serve

    return trio.run(
        lambda: run_serve(
            args.config, host=args.host, port=args.port, out=sys.stdout, err=sys.stderr
        )
    )


def _sole_error(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _upstream_formats(url: str = "URL") -> str:
    """The wire formats the fake upstream speaks, with each provider kind's base URL.

    Built from ``providers.testing.UPSTREAM_KINDS``, the table the server's own
    ``base_url`` uses, so this list cannot drift from what it serves.
    """
    from providers.testing import UPSTREAM_KINDS

    rows = [
        [kind if kind == wire else f"{kind} ({wire} format)", f"{url}/<scenario>{path}"]
        for wire in dict.fromkeys(w for w, _ in UPSTREAM_KINDS.values())
        for kind, (w, path) in UPSTREAM_KINDS.items()
        if w == wire
    ]
    lines = ["wire formats (provider kind: the base_url to configure):"]
    lines += table_lines(rows, widths=[35], sep=" ", indent="  ")
    return "\n".join(lines)


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
            print(textwrap.indent(_upstream_formats(url), "  "))
            print("  Ctrl-C to stop", flush=True)
            await trio.sleep_forever()

    trio.run(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
