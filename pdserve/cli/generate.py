"""`pdserve generate PROMPT`: one request to a running cluster, its text streamed to stdout.

Also home of the flags and exit-code mapping that `pdserve chat` and `pdserve status` share
(`add_connection_flags`, `add_sampling_flags`, `client_from_args`, `exit_code_for`), so all three read
the same way. Exit codes: 0 done; 1 the generation failed on the server; 2 bad input (refused by the
server as invalid, or bad flags); 3 the server refused the call or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from pdserve.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

TARGET_ENV = "PDSERVE_TARGET"
API_KEY_ENV = "PDSERVE_API_KEY"

EXAMPLES = """examples:
  pdserve generate "The capital of France is" --max-tokens 16 --temperature 0
  pdserve generate "Explain KV caches" --json | jq .usage
  echo "Summarise: ..." | pdserve generate - --chat --max-tokens 128
  pdserve generate "Solve 12*13" --think --thinking-budget 256 --deadline-ms 5000
  pdserve generate "Hi" --target gpu-box:50051 --tls --api-key "$KEY"

exit codes: 0 done, 1 generation failed, 2 bad input, 3 server refused or unreachable"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="send one prompt, stream the answer",
                            description="Send one prompt to a running pdserve cluster (gRPC) and stream the answer "
                                        "to stdout.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt text ('-' reads it from stdin)")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    add_connection_flags(parser)
    add_sampling_flags(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object at the end (text, finish_reason, usage) instead of streaming")
    parser.set_defaults(func=run)


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--target", default=os.environ.get(TARGET_ENV, "127.0.0.1:50051"), metavar="HOST:PORT",
                       help=f"the cluster's gRPC API (default: ${TARGET_ENV} or %(default)s)")
    group.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), metavar="KEY",
                       help=f"API key, when the server requires one (default: ${API_KEY_ENV})")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    group.add_argument("--ca-cert", metavar="FILE", help="PEM certificate of the CA that signed the server's (implies --tls)")
    group.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--model", help="model id (default: the served model)")
    group.add_argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    group.add_argument("--temperature", type=float, metavar="T", help="0 is greedy")
    group.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling, in (0, 1]")
    group.add_argument("--seed", type=int, metavar="S", help="sampling seed")
    group.add_argument("--stop", action="append", metavar="TEXT", help="stop at TEXT (repeatable)")
    budget = parser.add_argument_group("budget")
    budget.add_argument("--thinking-budget", type=int, metavar="N", help="most thinking tokens (then thinking is closed)")
    budget.add_argument("--think", action="store_true", help="the answer starts inside the thinking section")
    budget.add_argument("--max-total-tokens", type=int, metavar="N", help="most prompt plus output tokens")
    budget.add_argument("--deadline-ms", type=float, metavar="N", help="stop after N ms of wall time")
    budget.add_argument("--max-cost-usd", type=float, metavar="X", help="stop once the request costs X dollars")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `generate`/`chat` options of the sampling and budget flags (unset flags left out)."""
    options = {"model": args.model, "max_tokens": args.max_tokens, "temperature": args.temperature,
               "top_p": args.top_p, "seed": args.seed, "stop": args.stop}
    budget = {"max_thinking_tokens": args.thinking_budget, "max_total_tokens": args.max_total_tokens,
              "deadline_ms": args.deadline_ms, "max_cost_usd": args.max_cost_usd}
    budget = {k: v for k, v in budget.items() if v is not None}
    if args.think:
        budget["start_thinking"] = True
    options = {k: v for k, v in options.items() if v is not None}
    if budget:
        options["budget"] = budget
    return options


def client_from_args(args: argparse.Namespace):
    from pdserve.client import Client

    return Client(args.target, api_key=args.api_key, ssl=args.tls or bool(args.ca_cert),
                  root_certificates=args.ca_cert, timeout_s=args.timeout)


def exit_code_for(exc: Exception) -> int:
    """The exit code for an SDK error: 2 the input was refused as invalid, 3 refused/unreachable, 1 else."""
    from pdserve.errors import InvalidRequest, NotFound, ServerError

    if isinstance(exc, (InvalidRequest, NotFound)):
        return EXIT_USAGE
    if isinstance(exc, ServerError):
        return EXIT_FAILED
    return EXIT_UNAVAILABLE


def report_error(exc: Exception) -> int:
    from pdserve.errors import PdserveError

    message = exc.message if isinstance(exc, PdserveError) else str(exc)
    code = getattr(exc, "code", type(exc).__name__)
    print(f"error ({code}): {message}", file=sys.stderr)
    return exit_code_for(exc)


def read_prompt(prompt: str) -> str:
    return sys.stdin.read() if prompt == "-" else prompt


def run(args: argparse.Namespace) -> int:
    from pdserve.errors import PdserveError

    try:
        prompt = read_prompt(args.prompt)
        with client_from_args(args) as client:
            return _generate(client, prompt, args)
    except PdserveError as exc:
        return report_error(exc)
    except OSError as exc:  # an unreadable --ca-cert or stdin
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _generate(client, prompt: str, args: argparse.Namespace) -> int:
    options = options_from_args(args)
    if args.chat:
        chunks = client.chat([{"role": "user", "content": prompt}], stream=True, **options)
    else:
        chunks = client.generate(prompt, stream=True, **options)
    texts, last = [], None
    try:
        for chunk in chunks:
            texts.append(chunk.text)
            last = chunk
            if not args.json:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    finally:
        chunks.close()  # on Ctrl-C too: cancels the request on the server
    if not args.json:
        sys.stdout.write("\n")
    return _finish(last, "".join(texts), args)


def _finish(last, text: str, args: argparse.Namespace) -> int:
    from pdserve import FinishReason

    failed = last is None or last.finish_reason in (None, FinishReason.ERROR)
    if args.json:
        usage = asdict(last.usage) if last is not None and last.usage is not None else None
        print(json.dumps({
            "request_id": last.request_id if last else None, "text": text,
            "finish_reason": last.finish_reason.value if last and last.finish_reason else None,
            "usage": usage, "error": (last.error if last else "no answer") if failed else None,
        }))
    if failed:
        print(f"error: the generation failed: {last.error if last else 'no answer'}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
