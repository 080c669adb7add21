"""The controller's verdict on one health check: the engine's health, silence, or a dead actor."""

import time
from types import SimpleNamespace

from orchestrator.config import PdserveConfig
from orchestrator.controller import ClusterController, WorkerRecord


def _controller() -> ClusterController:
    return ClusterController(PdserveConfig().model_dump(mode="json"), "/models/none")


def _record() -> WorkerRecord:
    return WorkerRecord("decode-1", "decode", handle=None, state="ready")


def test_a_healthy_answer_refreshes_the_worker():
    record, now = _record(), time.monotonic() + 100
    stats = SimpleNamespace(healthy=True, health_error="")
    assert _controller()._health_problem(record, stats, now) == ""
    assert record.stats is stats and record.last_seen_s == now


def test_an_unhealthy_engine_fails_the_worker_with_its_reason():
    stats = SimpleNamespace(healthy=False, health_error="the engine process VLLM::Worker (pid 7) exited")
    assert _controller()._health_problem(_record(), stats, time.monotonic()) == stats.health_error


def test_silence_fails_the_worker_only_after_the_health_timeout():
    controller, record = _controller(), _record()
    timeout_s = controller.config.pools.health_timeout_s
    assert controller._health_problem(record, TimeoutError(), record.last_seen_s + timeout_s - 1) == ""
    problem = controller._health_problem(record, TimeoutError(), record.last_seen_s + timeout_s + 1)
    assert problem.startswith("no answer to health checks for") and "timed out" in problem


def test_a_failed_worker_is_shown_with_its_reason_then_forgotten():
    controller, record = _controller(), _record()
    controller.workers[record.worker_id] = record
    controller._forget(record)
    record.state, record.error = "failed", "wedged"
    assert [(w["worker_id"], w["state"], w["error"]) for w in controller.snapshot()] == [("decode-1", "failed", "wedged")]
    record.failed_s -= 301
    assert controller.snapshot() == []


def test_a_worker_that_began_to_stop_during_its_check_is_not_failed():
    """A drained worker's engine is shut down while a health check is out: "not running" is no failure."""
    import asyncio

    controller, record = _controller(), _record()
    controller.workers[record.worker_id] = record

    async def stats_while_stopping():
        record.state = "stopping"
        return SimpleNamespace(healthy=False, health_error="the vLLM engine is not running")

    record.handle = SimpleNamespace(stats=SimpleNamespace(remote=stats_while_stopping))
    asyncio.run(controller.check_health())
    assert record.state == "stopping" and controller.workers == {record.worker_id: record}


def test_the_snapshot_leaves_out_the_handles_the_caller_already_holds():
    controller = _controller()
    for worker_id in ("decode-1", "prefill-2"):
        controller.workers[worker_id] = WorkerRecord(worker_id, worker_id.split("-")[0], handle=f"handle of {worker_id}")
    assert {w["worker_id"]: w["handle"] for w in controller.snapshot()} == {
        "decode-1": "handle of decode-1", "prefill-2": "handle of prefill-2"}
    assert {w["worker_id"]: w["handle"] for w in controller.snapshot(("decode-1",))} == {
        "decode-1": None, "prefill-2": "handle of prefill-2"}
    assert controller.workers["decode-1"].handle == "handle of decode-1"  # the record keeps it
