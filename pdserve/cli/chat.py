"""`pdserve chat`: an interactive conversation with a running cluster, answers streamed.

The whole history goes with every turn (the server applies the model's chat template). Commands:
`/exit` (or end of input) quits, `/reset` forgets the history, `/help` lists them. Works with piped
input too, one user message per line. A refused message (for example a history grown past the
model's context) is reported and dropped from the history, and the session goes on; an unreachable
server ends it. Exit codes: 0 every message was answered; 2 bad flags, or a message was refused as
invalid; 1 an answer failed on the server; 3 the server refused the session or could not be reached.
The first failure decides.
"""

from __future__ import annotations

import argparse
import sys

from pdserve.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from pdserve.cli.generate import (
    add_connection_flags,
    add_sampling_flags,
    client_from_args,
    options_from_args,
    report_error,
)

HELP = "commands: /exit quit, /reset forget the conversation, /help this text"
EXAMPLES = """examples:
  pdserve chat
  pdserve chat --system "Answer in one sentence." --temperature 0.7 --max-tokens 256
  printf 'Hi\\nWhat did I just say?\\n' | pdserve chat --temperature 0

""" + HELP + """
exit codes: 0 every message answered, 1 an answer failed, 2 bad flags or a message refused as invalid,
            3 server refused or unreachable"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("chat", help="talk to the model interactively",
                            description="Chat with a running pdserve cluster: each line you type is a user message; "
                                        "the answer streams back.", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", metavar="TEXT", help="a system message at the start of the conversation")
    add_connection_flags(parser)
    add_sampling_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pdserve.errors import PdserveError

    try:
        with client_from_args(args) as client:
            return _session(client, args)
    except PdserveError as exc:
        return report_error(exc)
    except OSError as exc:  # an unreadable --ca-cert
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _initial(args: argparse.Namespace) -> list[dict[str, str]]:
    return [{"role": "system", "content": args.system}] if args.system else []


def _session(client, args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"pdserve chat with {args.target}; {HELP}", file=sys.stderr)
    history = _initial(args)
    status = EXIT_OK
    while True:
        line = _read_line(interactive)
        if line is None or line.strip() in ("/exit", "/quit"):
            return status
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            history = _initial(args)
            print("(conversation forgotten)", file=sys.stderr)
        elif line == "/help":
            print(HELP, file=sys.stderr)
        else:
            code = _turn(client, history, line, args)
            if code == EXIT_UNAVAILABLE:
                return code
            status = status or code


def _read_line(interactive: bool) -> str | None:
    try:
        return input("> ") if interactive else sys.stdin.readline() or None
    except EOFError:
        return None


def _turn(client, history: list[dict[str, str]], text: str, args: argparse.Namespace) -> int:
    """One user message and its streamed answer; the history keeps both only when the answer came."""
    from pdserve import FinishReason
    from pdserve.errors import PdserveError

    history.append({"role": "user", "content": text})
    chunks = client.chat(history, stream=True, **options_from_args(args))
    answer, last = [], None
    try:
        for chunk in chunks:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            answer.append(chunk.text)
            last = chunk
    except PdserveError as exc:
        history.pop()
        if answer:
            print()  # end the partial answer's line
        return report_error(exc)
    except KeyboardInterrupt:
        history.pop()
        print("\n(interrupted)", file=sys.stderr)
        return EXIT_OK
    finally:
        chunks.close()
    print()
    if last is None or last.finish_reason is FinishReason.ERROR:
        history.pop()
        print(f"error: the answer failed: {last.error if last else 'no answer'}", file=sys.stderr)
        return EXIT_FAILED
    history.append({"role": "assistant", "content": "".join(answer)})
    return EXIT_OK
