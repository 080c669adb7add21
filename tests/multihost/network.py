"""What a real network and real machines do to a cluster, done to the harness's hosts (hosts.py), for real.

- `cap(host, rate)`: a token bucket on the host's outgoing link (`tc qdisc ... tbf`, measured exact here);
  `uncap(host)` removes it.
- `partition(a, b)` / `heal(a, b)`: a and b stop reaching each other and nothing else changes (the head, the
  gateway, Ray's GCS still reach both): a blackhole route to the other in each host's namespace, so packets
  are dropped silently both ways, as a failed switch port would, and established TCP connections resume
  (retransmit) once healed. `ip link set IF down` would cut the host off from everything, head included.
- `lose_host(cluster, host)`: every process of the host killed at once (SIGKILL: Ray's raylet, the worker
  actor, its engines), as a power cut would; `return_host(cluster, host)` starts its Ray node again (same
  address, same resources), as a rebooted machine rejoining would.
Every change is undone by the cluster's `down()` (the namespaces go, and their routes and qdiscs with them).
"""

from __future__ import annotations

import os
import signal
import time

from hosts import Host, MultiHost, _alive, _namespace_pids, _run

TBF_BURST = "1mb"
TBF_LATENCY = "50ms"


def cap(host: Host, rate: str) -> None:
    """Cap what `host` sends (its eth0's egress) at `rate` (tc's units: "1gbit", "10gbit")."""
    uncap(host)
    _run(["ip", "netns", "exec", host.namespace, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
          "burst", TBF_BURST, "latency", TBF_LATENCY])


def uncap(host: Host) -> None:
    _run(["ip", "netns", "exec", host.namespace, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)


def partition(a: Host, b: Host) -> None:
    """a and b can no longer reach each other (each drops what it would send to the other)."""
    for src, dst in ((a, b), (b, a)):
        _run(["ip", "-n", src.namespace, "route", "replace", "blackhole", f"{dst.address}/32"])


def heal(a: Host, b: Host) -> None:
    for src, dst in ((a, b), (b, a)):
        _run(["ip", "-n", src.namespace, "route", "del", "blackhole", f"{dst.address}/32"], check=False)


def lose_host(cluster: MultiHost, host: Host) -> list[int]:
    """SIGKILL every process of the host at once (returns their pids); returns when all are gone."""
    if host.role == "head":
        raise ValueError("losing the head host loses the cluster's GCS: not a fault pdserve survives")
    pids = _namespace_pids(host.namespace)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {host.namespace} survived SIGKILL")
        time.sleep(0.1)
    return pids


def return_host(cluster: MultiHost, host: Host) -> None:
    """The lost host comes back: its Ray node starts again and rejoins the cluster."""
    cluster._start_ray(host, cluster.plan.work_dir / "ray_auth_token")
