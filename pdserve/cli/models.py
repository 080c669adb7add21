"""`pdserve models pull|list`: provision models into the local cache."""

from __future__ import annotations

import argparse

from pdserve.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="pull and list models", description="Provision models into $PDSERVE_HOME/models.",
                            epilog="examples:\n  pdserve models pull\n  pdserve models list",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    pull = actions.add_parser("pull", help="download and convert a catalogue model (idempotent)")
    pull.add_argument("name", nargs="?", default="smollm2-135m-instruct", help="catalogue name (default: %(default)s)")
    pull.add_argument("--quiet", action="store_true", help="no progress bars")
    pull.set_defaults(func=_pull)
    listing = actions.add_parser("list", help="the catalogue, and which models are pulled")
    listing.set_defaults(func=_list)
    parser.set_defaults(func=lambda args: (parser.print_help(), EXIT_USAGE)[1])


def _pull(args: argparse.Namespace) -> int:
    from orchestrator.errors import PdserveError
    from workers import modelstore

    try:
        path = modelstore.pull(args.name, progress=not args.quiet)
    except PdserveError as exc:
        print(f"error: {exc.message}", flush=True)
        return EXIT_USAGE if exc.caller else EXIT_FAILED
    print(path)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from workers import modelstore

    for name, entry in sorted(modelstore.CATALOG.items()):
        pulled = (modelstore.model_dir(name) / modelstore.MARKER).is_file()
        print(f"{name:28} {'pulled' if pulled else 'not pulled':11} {entry.description}")
    return EXIT_OK
