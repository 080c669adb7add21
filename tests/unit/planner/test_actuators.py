"""The virtual and Ray actuators (the Kubernetes one is in tests/integration/test_kubernetes_actuator.py)."""

import asyncio

import pytest

from orchestrator.actuators import ActuationFailed, RayActuator, VirtualActuator
from orchestrator.planner import ScalingDecision


def test_virtual_actuator_starts_workers_after_the_delay_and_removes_at_once():
    actuator = VirtualActuator(1, 2, start_delay_s=30.0)
    actuator.apply_at(ScalingDecision(num_prefill=3, num_decode=2), now_s=100.0)
    assert actuator.replicas_at(100.0) == {"prefill": 1, "decode": 2}
    assert actuator.replicas_at(129.9) == {"prefill": 1, "decode": 2}
    assert actuator.replicas_at(130.0) == {"prefill": 3, "decode": 2}
    assert actuator.desired("prefill") == 3
    # Shrinking cancels a worker still starting before it removes a ready one.
    actuator.apply_at(ScalingDecision(num_prefill=2, num_decode=1), now_s=110.0)
    assert actuator.replicas_at(110.0) == {"prefill": 1, "decode": 1}
    assert actuator.replicas_at(140.0) == {"prefill": 2, "decode": 1}
    assert actuator.history == [(100.0, 3, 2), (110.0, 2, 1)]


def test_virtual_actuator_async_interface_uses_its_clock():
    now = [0.0]
    actuator = VirtualActuator(1, 1, start_delay_s=5.0, clock=lambda: now[0])

    async def scenario():
        await actuator.apply(ScalingDecision(num_prefill=2, num_decode=1))
        first = await actuator.observe_replicas()
        now[0] = 5.0
        return first, await actuator.observe_replicas()

    assert asyncio.run(scenario()) == ({"prefill": 1, "decode": 1}, {"prefill": 2, "decode": 1})


class _Remote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)
        return call()


class FakeController:
    """Stands in for the controller actor handle: `.scale_to.remote(...)` and `.replicas.remote()` are awaitable."""

    def __init__(self, prefill, decode, fail=False):
        self.counts = {"prefill": prefill, "decode": decode}
        self.calls = []
        self.fail = fail
        self.scale_to = _Remote(self._scale_to)
        self.replicas = _Remote(lambda: dict(self.counts))

    def _scale_to(self, tier, num):
        if self.fail:
            raise RuntimeError("actor died")
        self.calls.append((tier, num))
        self.counts[tier] = num


def test_ray_actuator_shrinks_before_it_grows():
    controller = FakeController(prefill=4, decode=2)
    asyncio.run(RayActuator(controller).apply(ScalingDecision(num_prefill=2, num_decode=5)))
    assert controller.calls == [("prefill", 2), ("decode", 5)]
    controller = FakeController(prefill=1, decode=6)
    asyncio.run(RayActuator(controller).apply(ScalingDecision(num_prefill=3, num_decode=4)))
    assert controller.calls == [("decode", 4), ("prefill", 3)]
    assert asyncio.run(RayActuator(controller).observe_replicas()) == {"prefill": 3, "decode": 4}


def test_ray_actuator_reports_controller_failures():
    with pytest.raises(ActuationFailed, match="could not scale .* actor died") as info:
        asyncio.run(RayActuator(FakeController(1, 1, fail=True)).apply(ScalingDecision(num_prefill=2, num_decode=1)))
    assert info.value.retryable
