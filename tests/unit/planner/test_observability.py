"""Planner metrics and the tracing helpers."""

from prometheus_client import REGISTRY

from orchestrator.planner import ScalingDecision
from orchestrator.planner.metrics import observe_actual, observe_decision


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_decision_metrics():
    before = sample("pdserve_planner_decisions_total", tier="decode", reason="power_budget") or 0.0
    decision = ScalingDecision(num_prefill=3, num_decode=5, prefill_action="scale_up", decode_action="power_budget",
                               power_estimate_w=4200.0)
    observe_decision(decision)
    observe_actual({"prefill": 2, "decode": 5, "other": 9})
    assert sample("pdserve_planner_desired_replicas", tier="prefill") == 3
    assert sample("pdserve_planner_desired_replicas", tier="decode") == 5
    assert sample("pdserve_planner_actual_replicas", tier="prefill") == 2
    assert sample("pdserve_planner_decisions_total", tier="decode", reason="power_budget") == before + 1
    assert sample("pdserve_power_estimate_watts") == 4200.0


def test_trace_context_crosses_a_remote_call():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestrator import tracing

    first = tracing.setup_tracing("pdserve-first")
    provider = tracing.setup_tracing("pdserve-test")
    assert provider is not first  # another configuration replaces the first: the last one wins
    assert tracing.setup_tracing("pdserve-test") is provider  # the same configuration again: idempotent
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def actor_side(carrier):  # what a worker actor does with the dict it received
        with tracing.remote_span("prefill", carrier, tier="prefill"):
            pass

    with tracing.tracer().start_as_current_span("request") as root:
        carrier = tracing.inject_context()
        assert "traceparent" in carrier
        actor_side(dict(carrier))
    provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["request"].resource.attributes["service.name"] == "pdserve-test"
    assert spans["prefill"].context.trace_id == root.get_span_context().trace_id
    assert spans["prefill"].parent.span_id == root.get_span_context().span_id
    assert spans["prefill"].attributes["tier"] == "prefill"
