"""The live autoscaling loop's observations and steps, without Ray: reports in, decisions out."""

from __future__ import annotations

import asyncio

from orchestrator.autoscaler import Autoscaler, GatewayReport
from orchestrator.config import load_config


class FakeActuator:
    def __init__(self, replicas: dict[str, int]) -> None:
        self.replicas = dict(replicas)
        self.applied = []

    async def apply(self, decision) -> None:
        self.applied.append(decision)
        self.replicas = {"prefill": decision.num_prefill, "decode": decision.num_decode}

    async def observe_replicas(self) -> dict[str, int]:
        return dict(self.replicas)


def autoscaler(actuator: FakeActuator, **overrides) -> Autoscaler:
    config = load_config(None, {"planner.enabled": True, "planner.interval_s": 10, **overrides})
    return Autoscaler(config, actuator, lambda: actuator.replicas, lambda: [], clock=lambda: 1000.0)


def test_outputs_are_estimated_at_arrival_from_what_requests_ask_times_the_fill_ratio():
    scaler = autoscaler(FakeActuator({"prefill": 1, "decode": 1}))
    # Earlier requests produced half of what they asked for ...
    scaler.record(GatewayReport(finished=[(985.0, 50, 100), (986.0, 60, 120), (987.0, 40, 80)]))
    # ... and a wave of long generations just arrived: none finished yet.
    scaler.record(GatewayReport(arrivals=[(995.0 + i * 0.1, 64, 400) for i in range(20)]))
    observations = scaler.observe(1000.0)
    assert scaler.fill_ratio() == 0.5
    assert observations.output_tokens.mean == 200
    assert observations.arrival_rate_per_s == 2.0
    assert observations.prompt_tokens.mean == 64


def test_latencies_come_from_first_tokens_and_gaps_streamed_in_the_interval():
    scaler = autoscaler(FakeActuator({"prefill": 1, "decode": 1}))
    scaler.record(GatewayReport(first_tokens=[(995.0, 100.0 + i) for i in range(10)],
                                token_gaps=[(996.0, 20.0)] * 90 + [(996.0, 200.0)] * 10,
                                arrivals=[(995.0, 10, 10)]))
    scaler.record(GatewayReport(first_tokens=[(980.0, 9999.0)] * 10))  # an earlier interval: not counted
    observations = scaler.observe(1000.0)
    assert observations.prefill_ttft_ms == 108.0
    assert observations.decode_itl_ms == 20.0


def test_too_few_samples_leave_latencies_unobserved():
    scaler = autoscaler(FakeActuator({"prefill": 1, "decode": 1}))
    scaler.record(GatewayReport(first_tokens=[(999.0, 50.0)], token_gaps=[(999.0, 5.0)]))
    observations = scaler.observe(1000.0)
    assert observations.prefill_ttft_ms is None and observations.decode_itl_ms is None


def test_a_generation_heavy_wave_grows_the_decode_pool_as_it_arrives():
    actuator = FakeActuator({"prefill": 1, "decode": 1})
    scaler = autoscaler(actuator, **{"planner.decode.max_replicas": 16, "planner.prefill.max_replicas": 16})
    scaler.record(GatewayReport(arrivals=[(991.0 + i * 0.02, 64, 512) for i in range(400)]))  # 40 req/s x 512
    decision = asyncio.run(scaler.step())
    assert decision.num_decode > 1 and decision.num_decode >= decision.num_prefill
    assert actuator.applied == [decision]
    assert scaler.state()["decode_replicas"] == decision.num_decode and scaler.state()["last_reasons"]


def test_old_samples_leave_the_window():
    scaler = autoscaler(FakeActuator({"prefill": 1, "decode": 1}))
    scaler.record(GatewayReport(arrivals=[(100.0, 5000, 1)], finished=[(100.0, 1, 100)]))
    observations = scaler.observe(1000.0)
    assert observations.prompt_tokens.mean != 5000 and scaler.fill_ratio() == 1.0
