"""Roofline sanity, the span closed form, the power model, and catalogue errors."""

import pytest

from orchestrator.errors import ConfigError
from simulations.hardware import get_accelerator
from simulations.models import get_model
from simulations.power import PowerConfig, PowerModel
from simulations.timing import CoefficientTiming, Efficiency, RooflineTiming, span_ms


def _roofline(model="llama-3.1-70b", gpu="h100-sxm", tp=4):
    return RooflineTiming(get_model(model), get_accelerator(gpu), tp)


def test_prefill_is_compute_bound_and_decode_bandwidth_bound():
    t = _roofline()
    flops = 2 * t.model.active_params * 4096
    compute_ms = t._compute_ms(flops, 1.0)
    assert t.prefill_ms([(4096, 0)]) == pytest.approx(compute_ms + t._comm_ms(4096) + t.efficiency.step_overhead_ms, rel=0.05)
    (compute, memory) = t.decode_lines(8, 8 * 1000)
    assert memory[0] > 3 * compute[0]  # weights dominate a small decode batch
    # decode step time hardly grows with batch while weight-bound; prefill grows linearly with tokens
    assert t.decode_ms(32, 32 * 1000) < 1.5 * t.decode_ms(1, 1000)
    assert t.prefill_ms([(8192, 0)]) > 1.8 * t.prefill_ms([(4096, 0)])


def test_faster_hardware_and_more_tp_are_faster():
    assert _roofline(gpu="b200").prefill_ms([(2048, 0)]) < _roofline(gpu="h100-sxm").prefill_ms([(2048, 0)])
    assert _roofline(gpu="h200").decode_ms(16, 16000) < _roofline(gpu="h100-sxm").decode_ms(16, 16000)
    assert _roofline(tp=8).decode_ms(16, 16000) < _roofline(tp=2).decode_ms(16, 16000)


def test_moe_decode_reads_only_touched_experts():
    model = get_model("deepseek-v3")
    assert model.weight_bytes_read(1) < 0.1 * model.weight_bytes
    assert model.weight_bytes_read(4096) == pytest.approx(model.weight_bytes, rel=0.01)


def test_span_closed_form_matches_the_sum_of_steps():
    t = _roofline(tp=2)
    for batch, context, steps in ((1, 500, 300), (64, 64 * 2000, 500), (200, 200 * 100, 50)):
        direct = sum(t.decode_ms(batch, context + j * batch) for j in range(steps))
        assert t.decode_span_ms(batch, context, steps) == pytest.approx(direct, rel=1e-9)
        within = t.decode_steps_within(batch, context, direct * 0.5, steps)
        assert span_ms(t.decode_lines(batch, context), within) <= direct * 0.5 < span_ms(t.decode_lines(batch, context), within + 1)


def test_coefficient_timing_follows_its_formula():
    t = CoefficientTiming(10, 0.1, 1e-5, 5, 0.001, 0.2)
    assert t.prefill_ms([(100, 0), (200, 0)]) == pytest.approx(10 + 0.1 * 300 + 1e-5 * (100**2 + 200**2))
    assert t.decode_ms(4, 4000) == pytest.approx(5 + 0.001 * 4000 + 0.2 * 4)


def test_kv_capacity_and_a_model_that_does_not_fit():
    assert _roofline(tp=4).kv_capacity_tokens() > 100_000 > _roofline(tp=2).kv_capacity_tokens() > 0
    assert RooflineTiming(get_model("deepseek-v3"), get_accelerator("h100-sxm"), 1).kv_capacity_tokens() == 0


def test_power_per_phase_and_cap():
    h100 = get_accelerator("h100-sxm")
    power = PowerModel(h100)
    assert power.phase_w("idle") < power.phase_w("decode") < power.phase_w("prefill") <= h100.tdp_w
    assert power.all_in_kw_per_gpu == pytest.approx(1.73)
    assert power.facility_j(0.0, 1.0) > 0  # host and facility draw even when GPUs idle
    capped = PowerModel(h100, PowerConfig(power_cap_fraction=0.7))
    assert capped.clock_factor("prefill") < 1.0 and capped.clock_factor("decode") == 1.0
    assert capped.all_in_kw_per_gpu < power.all_in_kw_per_gpu
    with pytest.raises(ConfigError):
        PowerConfig(idle_fraction=0.9, decode_fraction=0.5)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: .*h100-sxm"):
        get_accelerator("tpu-v9")
    with pytest.raises(ConfigError, match="announced only"):
        get_accelerator("vera-rubin")
    with pytest.raises(ConfigError, match="valid: .*llama-3.1-70b"):
        get_model("llama-9")
    with pytest.raises(ConfigError, match=">= 1"):
        RooflineTiming(get_model("llama-3.1-8b"), get_accelerator("h100"), 0, Efficiency())
