"""The faults of a real cluster, each done for real to a multi-host pdserve (hosts.py) while requests stream,
with exact counts (faultstreams.py): the tests (test_multihost_faults.py, run after the others) assert on them, `benchmarks/chaos.py` prints them.

The cluster: a head host (gateway, controller), a prefill host and two decode hosts, one worker each. Every
scenario starts from the full cluster (1 prefill + 2 decode workers ready, /health 200), does its fault while
requests are in flight, and returns once the cluster is full again: `FaultCounts` with the requests in flight,
completed, token-identical to the no-fault greedy answer (float32), recomputed (KV not transferred), ended
with an explicit error, lost (must be 0), the longest gap a client saw, and the seconds until full capacity.

1. decode engine `kill -9` mid-stream, with 2 decode workers and with 1
2. prefill engine `kill -9` during prefill
3. the P->D handoff: prefill done, its worker killed while its KV frames are still on their way (held back by
   a `stall` KV fault, so the kill lands in that window every time, not by luck)
4. a decode host lost (every process of it SIGKILLed, raylet included), returning 10 s later
5. the prefill host and the decode hosts partitioned for 10 s (only from each other), then healed
6. KV transfer faults (drop, corrupt, stall) on every 3rd transfer under load
7. the controller actor's process killed
8. scale-down and scale-up while a decode engine is killed and the prefill/decode partition is on
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

import network
from agent import RayAgent
from faultstreams import FaultCounts, Outcome, run_streams
from hosts import Host, MultiHost, _run

ROLES = ("head", "prefill", "decode", "decode")
NUM_DECODE = 2
RECOVERY_TIMEOUT_S = 600.0  # a replacement engine's start while three engines share two cores
PARTITION_S = 10.0
KV_FAULT_EVERY = 3
STALL_S = 20.0  # a stalled transfer's frames are held this long: past the harness's kv.timeout_s (5 s)
PROMPTS = [f"Tell a long story about a lighthouse keeper named {name}." for name in ("Ada", "Bo", "Cy", "Di")]
LONG_PROMPTS = [f"{name}: " + " ".join(["the quiet harbour at dawn"] * 250) for name in ("Ada", "Bo", "Cy", "Di")]
# Under load: distinct prompts (numbered first: no prefix is cached anywhere, not even by an earlier
# scenario, whose prefix cache would skip the prefill and so the transfer), a mix of lengths.
KV_FAULTS = ("drop", "corrupt", "stall")
LOAD_PROMPTS = {kind: [f"({kind} {i}) " + (PROMPTS[i % 4] if i % 2 else LONG_PROMPTS[i % 4][:400]) for i in range(12)]
                for kind in KV_FAULTS}
LATE_PROMPTS = [f"[{i}] Name three rivers of Europe and one city on each." for i in range(4)]
MAX_TOKENS = 64


@dataclass
class Chaos:
    """The multi-host cluster, its Ray agent, and the no-fault answers every scenario is checked against."""

    cluster: MultiHost
    agent: RayAgent
    expected: dict[str, list[int]]  # prompt -> its greedy answer on the healthy cluster

    @classmethod
    def start(cls, cluster: MultiHost) -> Chaos:
        agent = RayAgent.start(cluster)
        chaos = cls(cluster, agent, {})
        prompts = PROMPTS + LONG_PROMPTS + [p for kind in KV_FAULTS for p in LOAD_PROMPTS[kind]] + LATE_PROMPTS
        outcomes = chaos.streams(prompts)
        failed = [o.error for o in outcomes if not o.completed]
        if failed:
            raise RuntimeError(f"the healthy cluster failed requests: {failed}")
        chaos.expected = {p: o.token_ids for p, o in zip(prompts, outcomes)}
        return chaos

    # ---- the cluster as its users and operators see it ------------------------------------------------

    def status(self) -> dict:
        from pdserve import Client

        with Client(self.cluster.endpoints["grpc"], timeout_s=30) as client:
            return client.status()

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.cluster.endpoints['http']}/health", timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def workers(self, tier: str, state: str = "ready") -> list[dict]:
        return [w for w in self.status()["pools"][tier]["workers"] if w["state"] == state]

    def host_of(self, worker: dict) -> Host:
        address = {urlsplit(e).hostname for e in worker["kv_endpoints"].values()}
        return next(h for h in self.cluster.plan.hosts if h.address in address)

    def wait_full(self, since: float, num_decode: int = NUM_DECODE) -> float:
        """Seconds from `since` until 1 prefill and `num_decode` decode workers are ready, none is starting,
        and /health says 200."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                pools = self.status()["pools"]
            except Exception:  # noqa: BLE001 - the gateway may be busy or briefly unreachable mid-fault
                time.sleep(1)
                continue
            states = {tier: [w["state"] for w in pools[tier]["workers"]] for tier in ("prefill", "decode")}
            if (states["prefill"].count("ready") == 1 and states["decode"].count("ready") == num_decode
                    and "starting" not in states["prefill"] + states["decode"] and self.health() == 200):
                return time.monotonic() - since
            time.sleep(1)
        raise AssertionError(f"the cluster was not full again within {RECOVERY_TIMEOUT_S:.0f} s: {self.status()['pools']}")

    def streams(self, prompts: list[str], fault=None, after_tokens: int = 8, during=None,
                every_stream: bool = False) -> list[Outcome]:
        return run_streams(self.cluster.endpoints["grpc"], prompts, fault=fault, after_tokens=after_tokens,
                           max_tokens=MAX_TOKENS, during=during, every_stream=every_stream)

    def counts(self, fault: str, prompts: list[str], outcomes: list[Outcome], recovered_s: float) -> FaultCounts:
        return FaultCounts.of(fault, outcomes, [self.expected[p] for p in prompts], recovered_s)

    def scale(self, tier: str, num_workers: int) -> None:
        self.agent.call("scale", tier=tier, num_workers=num_workers)

    def engine(self, worker: dict) -> psutil.Process:
        """The worker's vLLM engine process that holds its KV receiver (`VLLM::Worker`): the process of its
        host listening on the worker's KV port (the status document's `kv_endpoints`), as the host's own
        `ss` sees it (a socket is visible only from its network namespace)."""
        host = self.host_of(worker)
        port = int(worker["kv_endpoints"]["zmq"].rsplit(":", 1)[1])
        listening = _run(["ip", "netns", "exec", host.namespace, "ss", "-Hltnp", f"sport = :{port}"]).stdout
        processes = [psutil.Process(int(pid)) for pid in set(re.findall(r"pid=(\d+)", listening))]
        # A child that inherited the listening socket shares it: the engine is the deepest holder.
        deepest = [p for p in processes if not any(p.pid in {a.pid for a in q.parents()} for q in processes)]
        if len(deepest) != 1:
            raise AssertionError(f"not one process of {host.address} listens on {worker['id']}'s KV port {port}: {listening!r}")
        return deepest[0]

    def worker_processes(self, worker: dict) -> list[psutil.Process]:
        """The worker's Ray actor process and every process under it (its engine's)."""
        actor = self.engine(worker)
        while not actor.name().startswith("ray::"):
            actor = actor.parent()
        return [actor, *actor.children(recursive=True)]

    def _controller_on_head(self) -> int:
        """The controller's pid, once it is checked to run on the head host (with `pdserve up`), where no
        worker host's loss or partition takes it along."""
        pid = self.agent.call("controller_pid")
        namespace = _run(["ip", "netns", "identify", str(pid)]).stdout.strip()
        head = self.cluster.plan.host("head").namespace
        if namespace != head:
            raise AssertionError(f"the controller runs in {namespace or 'the root namespace'}, not on the head host {head}")
        return pid

    def close(self) -> None:
        self.agent.close()


def _after(seconds: float, prompts: list[str]) -> list[str]:
    """`prompts`, `seconds` from now (requests that arrive while a fault is on)."""
    time.sleep(seconds)
    return prompts


def _kill(*processes: psutil.Process) -> float:
    for process in processes:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return time.monotonic()


def _busiest_decode(chaos: Chaos) -> dict:
    return max(chaos.workers("decode"), key=lambda w: w["num_running"])


# ---- the scenarios -------------------------------------------------------------------------------------


def decode_engine_killed(chaos: Chaos, num_decode: int = NUM_DECODE) -> FaultCounts:
    """kill -9 of a decode engine under four streams (with one decode worker, the prefill worker serves the
    streams, degraded, until the replacement is ready)."""
    if num_decode != NUM_DECODE:
        chaos.scale("decode", num_decode)
        chaos.wait_full(time.monotonic(), num_decode)
    try:
        killed: list[float] = []
        outcomes = chaos.streams(PROMPTS, fault=lambda: killed.append(_kill(chaos.engine(_busiest_decode(chaos)))))
        recovered = chaos.wait_full(killed[0], num_decode)
    finally:
        if num_decode != NUM_DECODE:
            chaos.scale("decode", NUM_DECODE)
    if num_decode != NUM_DECODE:
        chaos.wait_full(time.monotonic())
    return chaos.counts(f"decode engine kill -9, {num_decode} decode worker{'s' * (num_decode > 1)}", PROMPTS, outcomes, recovered)


def prefill_engine_killed(chaos: Chaos) -> FaultCounts:
    """kill -9 of the prefill engine while it computes four long prompts: the decode workers compute them."""
    prefill = chaos.workers("prefill")[0]
    killed: list[float] = []

    def kill_during_prefill() -> None:
        time.sleep(0.5)  # the four long prompts queue on the one prefill engine: it is mid-prefill now
        killed.append(_kill(chaos.engine(prefill)))

    outcomes = chaos.streams(LONG_PROMPTS, fault=kill_during_prefill, after_tokens=0)
    return chaos.counts("prefill engine kill -9 during prefill", LONG_PROMPTS, outcomes, chaos.wait_full(killed[0]))


def handoff_lost(chaos: Chaos) -> FaultCounts:
    """The prefill is done (every stream has its first token, which the prefill computed) but the KV frames are
    still held in the prefill worker's sender (a `stall` fault) when the whole prefill worker is killed: the
    decode workers get part of the KV or none, and recompute the prompts."""
    prefill = chaos.workers("prefill")[0]
    chaos.agent.call("kv_fault", worker_id=prefill["id"], kind="stall", count=len(PROMPTS), stall_s=STALL_S)
    killed: list[float] = []
    outcomes = chaos.streams(PROMPTS, fault=lambda: killed.append(_kill(*chaos.worker_processes(prefill))), after_tokens=1,
                             every_stream=True)
    return chaos.counts("P->D handoff: prefill worker killed before the KV arrived", PROMPTS, outcomes, chaos.wait_full(killed[0]))


def host_lost(chaos: Chaos, away_s: float = 10.0) -> FaultCounts:
    """A decode host loses power under four streams: every process of it dies at once, Ray's raylet included.
    It comes back `away_s` later (its Ray node rejoins), and the decode pool refills there."""
    host = chaos.host_of(_busiest_decode(chaos))
    killed: list[float] = []

    def lose() -> None:
        network.lose_host(chaos.cluster, host)
        killed.append(time.monotonic())
        threading.Timer(away_s, network.return_host, (chaos.cluster, host)).start()

    outcomes = chaos.streams(PROMPTS, fault=lose)
    return chaos.counts(f"decode host lost (raylet too), back after {away_s:.0f} s", PROMPTS, outcomes, chaos.wait_full(killed[0]))


def _partition(chaos: Chaos, seconds: float = PARTITION_S) -> float:
    plan = chaos.cluster.plan
    prefill = plan.host("prefill")
    decodes = [h for h in plan.hosts if h.role == "decode"]
    for host in decodes:
        network.partition(prefill, host)
    started = time.monotonic()
    try:
        time.sleep(seconds)
    finally:
        for host in decodes:
            network.heal(prefill, host)
    return started


def partitioned(chaos: Chaos) -> tuple[FaultCounts, float]:
    """The prefill host and the decode hosts cannot reach each other for 10 s (everything else can): streams
    in flight go on (their KV is there already), requests sent meanwhile recompute after kv.timeout_s (or are
    served whole by a prefill worker when no decode worker answered), and once healed transfers resume. Returns the counts and the seconds from the heal until a request's KV was
    transferred again."""
    started: list[float] = []
    outcomes = chaos.streams(PROMPTS, fault=lambda: started.append(_partition(chaos)),
                             during=lambda: _after(1.0, LATE_PROMPTS))
    healed = started[0] + PARTITION_S
    resumed = _transfers_again(chaos, healed)
    counts = chaos.counts(f"prefill/decode hosts partitioned {PARTITION_S:.0f} s", PROMPTS + LATE_PROMPTS, outcomes,
                          chaos.wait_full(started[0]))
    return counts, resumed


def _transfers_again(chaos: Chaos, since: float, timeout_s: float = 120.0) -> float:
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        outcome = chaos.streams([f"<{attempt}> after the partition: " + PROMPTS[0]])[0]
        if outcome.completed and not outcome.recomputed:
            return time.monotonic() - since
    raise AssertionError(f"no KV transfer succeeded within {timeout_s:.0f} s of the heal")


def kv_faults_under_load(chaos: Chaos, kind: str) -> FaultCounts:
    """Every 3rd KV transfer of the prefill worker `drop`s its frames, `corrupt`s one, or `stall`s them past
    the receiver's timeout, while 12 requests of mixed lengths run at once: each such transfer is recomputed,
    and no token differs."""
    prefill = chaos.workers("prefill")[0]
    args = {"stall_s": STALL_S} if kind == "stall" else {}
    chaos.agent.call("kv_fault", worker_id=prefill["id"], kind=kind, every=KV_FAULT_EVERY, **args)
    started = time.monotonic()
    prompts = LOAD_PROMPTS[kind]
    try:
        outcomes = chaos.streams(prompts)
    finally:
        chaos.agent.call("clear_kv_faults", worker_id=prefill["id"])
    return chaos.counts(f"KV {kind} on every {KV_FAULT_EVERY}rd transfer, {len(prompts)} at once", prompts,
                        outcomes, chaos.wait_full(started))


def controller_killed(chaos: Chaos) -> FaultCounts:
    """The controller actor's process SIGKILLed under four streams: Ray restarts it, it finds the workers
    again, and it can scale once more."""
    before = {w["id"] for tier in ("prefill", "decode") for w in chaos.workers(tier)}
    pid = chaos._controller_on_head()
    killed: list[float] = []
    outcomes = chaos.streams(PROMPTS, fault=lambda: killed.append(_kill(psutil.Process(pid))))
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        try:
            if chaos.agent.call("controller_pid") != pid:
                break
        except Exception:  # noqa: BLE001 - not back yet
            if time.monotonic() > deadline:
                raise
        time.sleep(1)
    recovered = chaos.wait_full(killed[0])
    chaos._controller_on_head()
    after = {w["id"] for tier in ("prefill", "decode") for w in chaos.workers(tier)}
    if after != before:
        raise AssertionError(f"the restarted controller did not keep the workers: {sorted(before)} -> {sorted(after)}")
    return chaos.counts("controller actor kill -9", PROMPTS, outcomes, recovered)


def scale_during_faults(chaos: Chaos) -> FaultCounts:
    """Scale the decode pool down to 1 and back up to 2 while a decode engine is killed and the prefill and
    decode hosts are partitioned."""
    killed: list[float] = []

    def faults() -> None:
        # Found before the scale-down starts: the controller may retire this very worker, and once its engine
        # stopped there is nothing listening to find it by (a clean-clone CI lost that race once).
        engine = chaos.engine(_busiest_decode(chaos))
        partition = threading.Thread(target=_partition, args=(chaos,))
        partition.start()
        scale_down = threading.Thread(target=chaos.scale, args=("decode", 1))
        scale_down.start()
        killed.append(_kill(engine))
        scale_down.join()
        partition.join()
        chaos.scale("decode", NUM_DECODE)

    try:
        outcomes = chaos.streams(PROMPTS, fault=faults, during=lambda: _after(1.0, LATE_PROMPTS))
    finally:
        chaos.scale("decode", NUM_DECODE)  # whatever happened: the next scenario finds the full cluster
    return chaos.counts("scale 2->1->2 decode during engine kill + partition", PROMPTS + LATE_PROMPTS, outcomes,
                        chaos.wait_full(killed[0]))


SCENARIOS = ("decode_engine_killed_2", "decode_engine_killed_1", "prefill_engine_killed", "handoff_lost", "host_lost",
             "partitioned", "kv_drop", "kv_corrupt", "kv_stall", "controller_killed", "scale_during_faults")


def run(chaos: Chaos, name: str) -> FaultCounts:
    """One scenario by its name in SCENARIOS."""
    if name.startswith("decode_engine_killed_"):
        return decode_engine_killed(chaos, int(name.rsplit("_", 1)[1]))
    if name.startswith("kv_"):
        return kv_faults_under_load(chaos, name.removeprefix("kv_"))
    if name == "partitioned":
        return partitioned(chaos)[0]
    return globals()[name](chaos)

