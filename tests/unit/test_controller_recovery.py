"""A restarted controller's plan: what each worker its checkpoint lists becomes, from what it answered."""

from types import SimpleNamespace

from orchestrator.recovery import Checkpoint, Found, plan_recovery

HEALTHY = SimpleNamespace(healthy=True, health_error="")


def _described(info="engine-info", draining=False, stats=HEALTHY) -> dict:
    return {"worker_id": "w", "tier": "decode", "info": info, "draining": draining, "cpu_cores": "0", "stats": stats}


def _actions(*found: Found) -> list[tuple[str, str]]:
    return [(step.found.worker_id, step.action) for step in plan_recovery(list(found))]


def test_a_serving_worker_is_taken_over_as_ready():
    assert _actions(Found("decode-1", "decode", "handle", _described())) == [("decode-1", "serve")]


def test_a_worker_still_starting_or_silent_has_its_start_awaited_again():
    mid_start = Found("decode-1", "decode", "handle", _described(info=None))
    silent = Found("prefill-1", "prefill", "handle", problem="unreachable: no answer in 2 s")
    assert _actions(mid_start, silent) == [("decode-1", "start"), ("prefill-1", "start")]


def test_a_draining_worker_resumes_its_drain():
    assert _actions(Found("decode-1", "decode", "handle", _described(draining=True))) == [("decode-1", "retire")]


def test_dead_gone_and_unhealthy_workers_are_failed_with_their_reason():
    sick = SimpleNamespace(healthy=False, health_error="the engine process VLLM::Worker (pid 7) exited")
    steps = plan_recovery([Found("decode-1", "decode", "handle", problem="dead: the actor died"),
                           Found("decode-2", "decode", None, problem="gone"),
                           Found("prefill-1", "prefill", "handle", _described(stats=sick))])
    assert [s.action for s in steps] == ["fail", "fail", "fail"]
    assert "dead: the actor died" in steps[0].reason and "gone" in steps[1].reason
    assert steps[2].reason == sick.health_error


def test_the_checkpoint_survives_its_json_round_trip():
    checkpoint = Checkpoint({"prefill": 1, "decode": 2}, {"decode-1": "decode", "prefill-1": "prefill"}, restarts=3)
    assert Checkpoint.from_json(checkpoint.to_json()) == checkpoint
