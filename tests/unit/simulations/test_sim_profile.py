"""Measured profiles as the simulator's timing source: same predictions as the profile, clear errors for a bad file."""

import json

import pytest

from orchestrator.errors import ConfigError
from orchestrator.profiles import EXAMPLE_PROFILE, EngineProfile
from pdserve.cli import main
from simulations.config import SimConfig
from simulations.profile import ProfileTiming, load_profile, profile_of
from simulations.request import SimRequest
from simulations.run import simulate
from simulations.timing import RooflineTiming


@pytest.fixture
def profile():
    return EngineProfile.load(EXAMPLE_PROFILE)


def profile_config(**changes):
    values = {"model": "smollm2-135m", "timing": "profile", "profile": str(EXAMPLE_PROFILE), "num_prefill": 1,
              "num_decode": 1, "transfer_gb_s": 1.0, "budgets": "off"}
    values.update(changes)
    return SimConfig(**values)


def test_step_times_are_the_profiles_predictions(profile):
    timing = ProfileTiming(profile)
    assert timing.prefill_ms([(128, 0)]) == pytest.approx(profile.predict_prefill_ms([128]))
    assert timing.prefill_ms([(96, 0)] * 4) == pytest.approx(profile.predict_prefill_ms([96] * 4))
    assert timing.decode_ms(8, 4096) == pytest.approx(profile.predict_decode_step_ms(8, 4096))
    # a span of steps: each step adds `batch` tokens of context
    expected = sum(profile.predict_decode_step_ms(4, 1000 + 4 * j) for j in range(50))
    assert timing.decode_span_ms(4, 1000, 50) == pytest.approx(expected)
    assert timing.kv_capacity_tokens() == profile.kv_capacity_tokens
    assert ProfileTiming(profile, kv_tokens=1000).kv_capacity_tokens() == 1000


def test_a_lone_request_takes_the_profiled_prefill_and_decode_steps(profile):
    config = profile_config(request_overhead_ms=7.0, decode_kv_load_steps=1)
    summary, result = simulate(config, [SimRequest(0, 0.0, 128, 33)])
    request = result.requests[0]
    assert request.ttft_s * 1e3 == pytest.approx(7.0 + profile.predict_prefill_ms([128]))
    # 32 decode steps of one request whose context grows from 129 tokens, after the KV hand-off
    steps_ms = sum(profile.predict_decode_step_ms(1, 129 + j) for j in range(32))
    handoff_ms = 128 * profile.kv_bytes_per_token / 1e9 * 1e3 + config.transfer_latency_ms
    assert (request.finish_s - request.first_token_s) * 1e3 == pytest.approx(steps_ms + handoff_ms, rel=1e-6)
    assert summary["configuration"]["timing"] == "profile"


def test_bad_profiles_are_refused_with_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nmodel: x\n: : :\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_profile(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("version: 1\nmodel: x\nhardware: {name: cpu, kind: cpu}\nblock_size: 32\n"
                     "kv_bytes_per_token: 100\nprefill: {points: []}\ndecode: {points: []}\n")
    with pytest.raises(ConfigError, match="prefill"):
        load_profile(wrong)
    no_capacity = tmp_path / "no_capacity.yaml"
    data = EngineProfile.load(EXAMPLE_PROFILE).to_dict()
    del data["kv_capacity_tokens"]
    no_capacity.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="--kv-tokens"):
        load_profile(no_capacity)
    assert load_profile(no_capacity, kv_tokens=5000).kv_capacity_tokens is None  # --kv-tokens supplies it


def test_cli_profile_errors_exit_2(tmp_path, capsys):
    assert main(["simulate", "--profile", str(tmp_path / "nope.yaml"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    assert main(["simulate", "--profile", str(bad), "--no-progress"]) == 2
    assert "invalid profile" in capsys.readouterr().err
    assert main(["simulate", "--profile", str(EXAMPLE_PROFILE), "--coefficients", "1,2,3,4,5,6"]) == 2


def test_cli_simulates_from_the_profile_with_its_model(tmp_path):
    out = tmp_path / "sim"
    code = main(["simulate", "--profile", str(EXAMPLE_PROFILE), "--workload", "chat", "--rate", "0.2", "--duration", "60",
                 "--spread", "0", "--no-progress", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["configuration"]["model"] == "smollm2-135m"  # from the profile
    assert summary["configuration"]["profile"] == str(EXAMPLE_PROFILE)


def test_profile_of_a_roofline_engine_predicts_its_step_times():
    from simulations.hardware import get_accelerator
    from simulations.models import get_model
    timing = RooflineTiming(get_model("llama-3.1-8b"), get_accelerator("h100-sxm"))
    fitted = profile_of(timing, "llama-3.1-8b", get_model("llama-3.1-8b").kv_bytes_per_token, 256, 8192)
    for length in (1024, 4096):  # (short prompts sit on the memory-bound knee the a + bL + cL^2 form smooths)
        assert fitted.predict_prefill_ms([length]) == pytest.approx(timing.prefill_ms([(length, 0)]), rel=0.1)
    assert fitted.predict_decode_step_ms(32, 32 * 1024) == pytest.approx(timing.decode_ms(32, 32 * 1024), rel=0.01)
    assert fitted.kv_capacity_tokens == timing.kv_capacity_tokens()
    assert profile_of(ProfileTiming(EngineProfile.load(EXAMPLE_PROFILE)), "x", 1, 1, 1).model == "smollm2-135m-instruct"
