"""KV across a capped network: transfer time against bytes, what layer streaming hides behind the prefill, and
what the network adds to the first tokens, on the multi-host harness (root; tests/multihost/hosts.py).

    .venv/bin/python benchmarks/kv_network.py [--rates none,10gbit,1gbit] [--lengths 256,512,1024,1792] [--reps 3]

Three hosts (head, prefill host, decode host, each its own network namespace), 1 prefill + 1 decode worker.
For each rate, the prefill host's outgoing link (the way KV goes) is capped with `tc ... tbf` (none: the veth
as it is), and prompts of each length (random token ids, a new prompt every time: nothing is cached) are sent
one at a time with max_tokens=2. Per request:
- KV bytes: the gateway's `pdserve_kv_transfer_bytes_total` (delta of /metrics around the request; the
  JSON also keeps `pdserve_kv_transfer_seconds`, which counts from the decode side's admission of the
  request, after the frames that came during the prefill were stashed: not the time on the wire);
- prefill_ms (the prefill worker's compute, layer by layer, frames leaving as each layer is done) and
  transfer_ms (from the prefill's end to the decode worker's start: the part of the transfer not hidden);
- TTFT (the first token comes from the prefill worker: the network is not on its path) and the time to the
  second token (the decode worker's first: the transfer's unhidden part is on it).
`hidden` = 1 - (transfer_ms at the cap - transfer_ms uncapped) / (bytes / rate): the share of the wire time
at the cap that the prefill covered. Writes summary.json and summary.md under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "multihost")]

import network  # noqa: E402
from hosts import MultiHost, unavailable_reason  # noqa: E402

RATES_BIT = {"none": None, "10gbit": 10e9, "1gbit": 1e9}


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def measure_one(client, http: str, prompt: list[int]) -> dict:
    def scrape() -> tuple[float, float]:
        text = urllib.request.urlopen(f"{http}/metrics", timeout=30).read().decode()
        return metric(text, "pdserve_kv_transfer_bytes_total"), metric(text, "pdserve_kv_transfer_seconds_sum")

    bytes0, seconds0 = scrape()
    sent = time.perf_counter()
    times, usage = [], None
    for chunk in client.generate(prompt, stream=True, max_tokens=2, temperature=0, ignore_eos=True):
        if chunk.token_ids:
            times.extend([time.perf_counter() - sent] * len(chunk.token_ids))
        usage = chunk.usage or usage
    time.sleep(0.2)  # the gateway counted the transfer before the stream ended; /metrics is read fresh
    bytes1, seconds1 = scrape()
    return {"prompt_tokens": len(prompt), "kv_bytes": bytes1 - bytes0, "transfer_s": seconds1 - seconds0,
            "prefill_ms": usage.prefill_ms, "unhidden_ms": usage.transfer_ms, "recomputed": usage.kv_recomputed,
            "ttft_ms": times[0] * 1000, "second_token_ms": times[1] * 1000}


def run(args: argparse.Namespace) -> dict:
    from pdserve import Client
    from workers.modelstore import DEFAULT_NAME, resolve

    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"kv_network.py needs network namespaces: {reason}")
    cluster = MultiHost.claim(("head", "prefill", "decode"))
    rows = []
    try:
        endpoints = cluster.up(str(resolve(DEFAULT_NAME, pull_missing=True)))
        prefill = cluster.plan.host("prefill")
        with Client(endpoints["grpc"], timeout_s=300) as client:
            for warm in range(3):  # the engines' first steps are slow
                client.generate([100 + warm] * 64, max_tokens=2, temperature=0)
            counter = 0
            for rate in args.rates:
                if RATES_BIT[rate]:
                    network.cap(prefill, rate)
                else:
                    network.uncap(prefill)
                for length in args.lengths:
                    for _ in range(args.reps):
                        counter += 1
                        prompt = [1000 + (counter * 7919 + i * 104729) % 40000 for i in range(length)]
                        row = {"rate": rate, **measure_one(client, endpoints["http"], prompt)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            network.uncap(prefill)
    finally:
        cluster.down()
    return summarize(rows, args)


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    table = []
    for length in args.lengths:
        base = [r for r in rows if r["rate"] == "none" and r["prompt_tokens"] == length]
        base_unhidden = statistics.median(r["unhidden_ms"] for r in base) if base else 0.0
        for rate in args.rates:
            group = [r for r in rows if r["rate"] == rate and r["prompt_tokens"] == length]
            if not group:
                continue
            med = {k: statistics.median(r[k] for r in group) for k in
                   ("kv_bytes", "transfer_s", "prefill_ms", "unhidden_ms", "ttft_ms", "second_token_ms")}
            wire_ms = med["kv_bytes"] * 8 / RATES_BIT[rate] * 1000 if RATES_BIT[rate] else None
            hidden = 1 - max(med["unhidden_ms"] - base_unhidden, 0.0) / wire_ms if wire_ms else None
            table.append({"rate": rate, "prompt_tokens": length, **{k: round(v, 4) for k, v in med.items()},
                          "kv_mb": round(med["kv_bytes"] / 1e6, 2),
                          "gb_per_s": round(med["kv_bytes"] / med["transfer_s"] / 1e9, 3) if med["transfer_s"] else None,
                          "wire_ms_at_cap": round(wire_ms, 1) if wire_ms else None,
                          "hidden": round(hidden, 3) if hidden is not None else None,
                          "recomputed": sum(r["recomputed"] for r in group), "n": len(group)})
    return {"rates": args.rates, "lengths": args.lengths, "reps": args.reps, "rows": rows, "table": table}


def markdown(summary: dict) -> str:
    lines = ["| link | prompt tokens | KV MB | wire ms at cap | prefill ms | unhidden ms "
             "| hidden by prefill | TTFT ms | 2nd token ms | recomputed |", "|---" * 10 + "|"]
    for r in summary["table"]:
        hidden = "-" if r["hidden"] is None else f"{r['hidden']:.0%}"
        lines.append(f"| {r['rate']} | {r['prompt_tokens']} | {r['kv_mb']} "
                     f"| {r['wire_ms_at_cap'] or '-'} | {r['prefill_ms']:.1f} | {r['unhidden_ms']:.1f} "
                     f"| {hidden} | {r['ttft_ms']:.1f} | {r['second_token_ms']:.1f} "
                     f"| {r['recomputed']}/{r['n']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=lambda s: s.split(","), default=["none", "10gbit", "1gbit"])
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[256, 512, 1024, 1792])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kv_network")
    args = parser.parse_args()
    unknown = set(args.rates) - set(RATES_BIT)
    if unknown:
        parser.error(f"unknown rates {sorted(unknown)}: use {', '.join(RATES_BIT)}")
    summary = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
