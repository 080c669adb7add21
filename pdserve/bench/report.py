"""The benchmark's outputs: the printed table, the JSON document, and ratios against a baseline run.

The JSON document (`--out`) is a public format: scripts and the README read it. Its fields are listed
in docs/bench.md; add fields, never rename them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

SCHEMA_VERSION = 1

# (dotted path in `summary`, which way is better)
COMPARED = (
    ("throughput.requests_per_s", "higher"), ("throughput.output_tokens_per_s", "higher"),
    ("throughput.total_tokens_per_s", "higher"), ("goodput.requests_per_s", "higher"),
    ("ttft_ms.p50", "lower"), ("ttft_ms.p90", "lower"), ("ttft_ms.p99", "lower"),
    ("tpot_ms.p50", "lower"), ("tpot_ms.p90", "lower"), ("tpot_ms.p99", "lower"),
    ("itl_ms.p50", "lower"), ("itl_ms.p99", "lower"), ("e2e_ms.p50", "lower"), ("e2e_ms.p99", "lower"),
    ("num_failed", "lower"),
)


def build_document(*, command: str, argv: Sequence[str], config: dict[str, Any], started_at: str,
                   summary: dict[str, Any], notes: Sequence[str], requests: Sequence[dict[str, Any]],
                   ramp: dict[str, Any] | None = None, comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole JSON report."""
    return {"schema_version": SCHEMA_VERSION, "command": command, "argv": list(argv), "config": config,
            "started_at": started_at, "summary": summary, "notes": list(notes), "ramp": ramp,
            "comparison": comparison, "requests": list(requests)}


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def load_json(path: str | Path) -> dict[str, Any]:
    """A previous run's JSON report; raises ConfigError when it is missing or not one."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"baseline file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read baseline {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("summary"), dict):
        raise ConfigError(f"{path} is not a `pdserve bench` JSON report (no summary)")
    return document


def lookup(summary: dict[str, Any], dotted: str) -> Any:
    value: Any = summary
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def compute_comparison(summary: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per compared metric: this run, the baseline, this / baseline (None when undefined)."""
    rows = []
    for dotted, better in COMPARED:
        this, base = lookup(summary, dotted), lookup(baseline, dotted)
        ratio = None
        if isinstance(this, (int, float)) and isinstance(base, (int, float)) and base != 0:
            ratio = round(this / base, 4)
        rows.append({"metric": dotted, "this": this, "baseline": base, "ratio": ratio, "better": better})
    return rows


def format_table(summary: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    lines = [
        f"requests: {summary['num_succeeded']} ok, {summary['num_failed']} failed, "
        f"{summary['num_sent']} sent of {summary['num_planned']} planned, in {summary['duration_s']:.2f} s",
    ]
    throughput = summary["throughput"]
    if throughput["requests_per_s"] is not None:
        lines.append(f"throughput: {throughput['requests_per_s']:.3f} req/s, "
                     f"{throughput['output_tokens_per_s']:.1f} output tok/s, "
                     f"{throughput['total_tokens_per_s']:.1f} total tok/s")
    goodput = summary["goodput"]
    if goodput["requests_per_s"] is not None:
        slos = [f"{name}<={goodput[f'slo_{name}_ms']:g} ms" for name in ("ttft", "tpot")
                if goodput[f"slo_{name}_ms"] is not None]
        lines.append(f"goodput: {goodput['requests_per_s']:.3f} req/s ({100 * goodput['fraction']:.1f}% of sent "
                     f"met {', '.join(slos)})")
    lines += ["", f"{'metric (ms)':<20}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'count':>8}"]
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        lines.append(_distribution_line(name, summary[name]))
    usage = summary["usage"]
    if usage["num_reported"]:
        for name in ("queue_ms", "prefill_ms", "transfer_ms", "decode_ms"):
            lines.append(_distribution_line(f"server {name}", usage[name]))
        lines.append(f"server flags: kv_recomputed {usage['kv_recomputed']}, prefill_skipped "
                     f"{usage['prefill_skipped']}, cached tokens {usage['cached_tokens_total']:.0f}")
    lines.append(_distribution_line("client lag", summary["dispatch_lag_ms"]))
    lines += _failure_lines(summary)
    return "\n".join(lines)


def format_comparison(rows: Sequence[dict[str, Any]], baseline_label: str) -> str:
    lines = [f"compared with {baseline_label} (ratio = this / baseline)",
             f"{'metric':<30}{'this':>12}{'baseline':>12}{'ratio':>9}  better"]
    for row in rows:
        lines.append(f"{row['metric']:<30}{_cell(row['this']):>12}{_cell(row['baseline']):>12}"
                     f"{_cell(row['ratio']):>9}  {row['better']}")
    return "\n".join(lines)


def _distribution_line(name: str, dist: dict[str, Any]) -> str:
    return (f"{name:<20}{_cell(dist['mean']):>10}{_cell(dist['p50']):>10}{_cell(dist['p90']):>10}"
            f"{_cell(dist['p99']):>10}{dist['count']:>8}")


def _failure_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if summary["failures"]:
        lines += ["", "failures:"]
        lines += [f"  {reason}: {entry['count']} (e.g. {entry['example']})"
                  for reason, entry in sorted(summary["failures"].items(), key=lambda kv: -kv[1]["count"])]
    if summary["output_length_mismatches"]:
        lines.append(f"note: {summary['output_length_mismatches']} successful requests returned a different "
                     f"number of output tokens than asked")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
