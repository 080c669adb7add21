"""Every fault of a real cluster, one after the other, on the multi-host harness: the table the README quotes.

    .venv/bin/python benchmarks/chaos.py [--only host_lost,partitioned] [--out benchmarks/results/chaos]

Builds the hosts (root; tests/multihost/hosts.py: a head, a prefill host and two decode hosts in network
namespaces, Ray with token auth, `pdserve up --address` on the head), takes every scenario's no-fault greedy
answers, then runs the scenarios of tests/multihost/faults.py in order (each starts from, and ends with, the
full cluster) and prints one row each: requests in flight, completed, token-identical, recomputed, explicit
errors, lost, the longest gap a client saw, and the seconds until full capacity again. The tests
(tests/multihost/test_multihost_faults.py) run the same scenarios and assert the invariants (0 lost, 0 errors, all
identical). Writes summary.json and summary.md under --out. A scenario that raises is reported and the run
goes on (exit 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "multihost")]

import faults  # noqa: E402
from faultstreams import FaultCounts  # noqa: E402
from hosts import MultiHost, unavailable_reason  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(faults.SCENARIOS),
                        help=f"scenarios, comma-separated (default all: {','.join(faults.SCENARIOS)})")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chaos")
    args = parser.parse_args()
    unknown = set(args.only) - set(faults.SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: use {', '.join(faults.SCENARIOS)}")
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"chaos.py needs network namespaces: {reason}")
    from workers.modelstore import DEFAULT_NAME, resolve

    cluster = MultiHost.claim(faults.ROLES, log_dir=args.out / "logs")
    results: list[FaultCounts] = []
    failures: dict[str, str] = {}
    started = time.monotonic()
    try:
        cluster.up(str(resolve(DEFAULT_NAME, pull_missing=True)))
        chaos = faults.Chaos.start(cluster)
        try:
            for name in args.only:
                try:
                    counts = faults.run(chaos, name)
                except Exception as exc:  # noqa: BLE001 - reported, and the next scenario runs
                    failures[name] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                    continue
                results.append(counts)
                print(counts.line(), flush=True)
        finally:
            chaos.close()
    finally:
        cluster.down()
    table = "\n".join([FaultCounts.HEADER, *(c.row() for c in results)])
    failed = "".join(f"\n- {name}: {error}" for name, error in failures.items())
    report = (f"{table}\n\n{len(results)} scenarios in {time.monotonic() - started:.0f} s"
              + (f"; failed to run:{failed}" if failures else "") + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(report)
    (args.out / "summary.json").write_text(json.dumps({"results": [c.__dict__ for c in results], "failures": failures}, indent=1))
    print(report)
    dirty = [c.fault for c in results if not c.clean]
    return 1 if failures or dirty else 0


if __name__ == "__main__":
    raise SystemExit(main())
