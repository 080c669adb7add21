"""`pdserve status`: the cluster's pools, workers, load, KV transfers and planner, as a table or JSON.

Calls `Client.status()` (gRPC GetClusterStatus) and prints the document readably; `--json` prints it
raw for scripts. A key the server did not send prints as "-", so the table reads the same against
older or partial servers. Exit codes: 0 printed; 1 the server failed; 3 refused or unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pdserve.cli import EXIT_OK, EXIT_USAGE
from pdserve.cli.generate import add_connection_flags, client_from_args, report_error

DEFAULT_TIMEOUT_S = 10.0
MISSING = "-"
POOLS = ("prefill", "decode")
WORKER_COLUMNS = ("POOL", "REPLICAS", "WORKER", "STATE", "HEALTHY", "RUNNING", "WAITING", "KV USED",
                  "FREE BLOCKS", "KV ENDPOINT", "ERROR")

EXAMPLES = """examples:
  pdserve status
  pdserve status --target gpu-box:50051 --tls --api-key "$KEY"
  pdserve status --json | jq '.pools.decode.workers[] | {id, kv_usage}'

exit codes: 0 printed, 1 server failed, 3 server refused or unreachable"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("status", help="show pools, workers, load and the planner",
                            description="Show a running pdserve cluster's pools and workers (state, load, KV cache), "
                                        "KV transfer rates, request counts and the planner's last decision.",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the raw status document (JSON)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pdserve.errors import PdserveError

    try:
        with client_from_args(args) as client:
            document = client.status(timeout_s=args.timeout or DEFAULT_TIMEOUT_S)
    except PdserveError as exc:
        return report_error(exc)
    except OSError as exc:  # an unreadable --ca-cert
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(document, indent=2) if args.json else render(document))
    return EXIT_OK


# ---- rendering (pure) --------------------------------------------------------------------------------

def field(document: Any, *path: str) -> Any:
    """document[path[0]][path[1]]...; None where a key is missing or a level is not an object."""
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def shown(value: Any, fmt: Callable[[Any], str] = str) -> str:
    """`fmt(value)`, or "-" for a missing value or one `fmt` cannot format."""
    if value is None:
        return MISSING
    try:
        return fmt(value)
    except (TypeError, ValueError):
        return MISSING


def yes_no(value: Any) -> str:
    if not isinstance(value, bool):
        raise TypeError("not a boolean")
    return "yes" if value else "no"


def percent(value: Any) -> str:
    return f"{float(value) * 100:.1f}%"


def byte_size(value: Any) -> str:
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def render(document: Any) -> str:
    """The status document as text: a summary, then one row per worker grouped by pool."""
    return "\n".join([*summary_lines(document), "", *table(worker_rows(document))])


def summary_lines(document: Any) -> list[str]:
    requests, transfers = field(document, "requests"), field(document, "transfers")
    lines = [
        f"model      {shown(field(document, 'model'))}",
        f"mode       {shown(field(document, 'mode'))}",
        f"dtype      {shown(field(document, 'dtype') or None)}",
        f"ready      {shown(field(document, 'ready'), yes_no)}",
        f"requests   {shown(field(requests, 'in_flight'))} in flight, {shown(field(requests, 'queued'))} queued, "
        f"{shown(field(requests, 'total'))} total",
        f"transfers  {shown(field(transfers, 'recent_gb_per_s'), lambda v: f'{float(v):.2f}')} GB/s recent, "
        f"{shown(field(transfers, 'num_completed'))} completed, {shown(field(transfers, 'num_recomputed'))} "
        f"recomputed, {shown(field(transfers, 'bytes_total'), byte_size)} moved",
    ]
    controller = field(document, "controller")
    reachable = field(controller, "reachable")
    lines.append(f"controller {shown(reachable, lambda v: 'up' if yes_no(v) == 'yes' else 'down (serving on the last snapshot)')}, "
                 f"{shown(field(controller, 'controller_restarts'))} restarts")
    degraded = field(document, "health", "degraded")
    if isinstance(degraded, str):
        lines.append(f"degraded   {degraded}")
    return lines + planner_lines(field(document, "planner"))


def planner_lines(planner: Any) -> list[str]:
    enabled = field(planner, "enabled")
    state = MISSING if not isinstance(enabled, bool) else ("on" if enabled else "off")
    lines = [f"planner    {state}: wants prefill {shown(field(planner, 'prefill_replicas'))}, "
             f"decode {shown(field(planner, 'decode_replicas'))}"]
    reasons = field(planner, "last_reasons")
    if isinstance(reasons, list):
        lines += [f"           - {reason}" for reason in reasons]
    return lines


def worker_rows(document: Any) -> list[tuple[str, ...]]:
    rows = []
    for pool in POOLS:
        entry = field(document, "pools", pool)
        replicas = f"{shown(field(entry, 'actual_replicas'))}/{shown(field(entry, 'desired_replicas'))}"
        listed = field(entry, "workers")
        workers = [w for w in listed if isinstance(w, dict)] if isinstance(listed, list) else []
        if not workers:
            rows.append((pool, replicas) + (MISSING,) * (len(WORKER_COLUMNS) - 2))
        for i, worker in enumerate(workers):
            rows.append((pool if i == 0 else "", replicas if i == 0 else "", *worker_cells(worker)))
    return rows


def worker_cells(worker: dict[str, Any]) -> tuple[str, ...]:
    free, total = worker.get("num_free_blocks"), worker.get("num_total_blocks")
    return (shown(worker.get("id")), shown(worker.get("state")), shown(worker.get("healthy"), yes_no),
            shown(worker.get("num_running")), shown(worker.get("num_waiting")), shown(worker.get("kv_usage"), percent),
            MISSING if free is None and total is None else f"{shown(free)}/{shown(total)}",
            shown(worker.get("kv_endpoint") or None), worker.get("error") or "")


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(WORKER_COLUMNS, *rows)]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in (WORKER_COLUMNS, *rows)]
