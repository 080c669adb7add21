"""The `pdserve` command line.

Each subcommand lives in its own module of this package and exposes `register(subparsers)`, which adds
its parser and sets `func` (taking the parsed args, returning an exit code). Exit codes: 0 success,
1 the operation failed, 2 bad usage or input, 3 the server refused or was unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order of `pdserve --help`.
COMMANDS = ("models", "up", "generate", "chat", "status", "bench", "profile", "simulate", "plan")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve",
        description="Disaggregated LLM serving: prefill and decode on separate worker pools.",
        epilog="Run `pdserve COMMAND --help` for a command's flags and examples.",
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity (default: WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pdserve.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pdserve.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
