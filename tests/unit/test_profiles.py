"""Engine profiles: file round trip, fitting accuracy, and errors a user can act on."""

import json

import numpy as np
import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.profiles import (
    EXAMPLE_PROFILE,
    DecodeCoefficients,
    DecodePoint,
    EngineProfile,
    HardwareInfo,
    InterferencePoint,
    PrefillCoefficients,
    PrefillPoint,
)

HW = HardwareInfo(name="test-gpu", kind="gpu", count=1)
TRUE_PREFILL = (30.0, 0.5, 1e-4)
TRUE_DECODE = (12.0, 0.003, 0.8)


def synthetic_profile(noise: float = 0.0, seed: int = 0) -> EngineProfile:
    rng = np.random.default_rng(seed)
    a, b, c = TRUE_PREFILL
    prefill = [PrefillPoint(prompt_tokens=n, batch_size=k, ttft_ms=(a + b * k * n + c * k * n * n) * (1 + rng.normal(0, noise)))
               for n in (16, 64, 256, 1024, 4096) for k in (1, 4)]
    da, db, dc = TRUE_DECODE
    decode = [DecodePoint(batch_size=k, total_context_tokens=k * ctx, step_ms=(da + db * k * ctx + dc * k) * (1 + rng.normal(0, noise)))
              for k in (1, 8, 32, 128) for ctx in (128, 1024, 4096)]
    return EngineProfile.from_points(model="m", hardware=HW, block_size=16, kv_bytes_per_token=1024,
                                     prefill_points=prefill, decode_points=decode, kv_capacity_tokens=100_000)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    profile = synthetic_profile(noise=0.02)
    path = tmp_path / f"p{suffix}"
    profile.save(path)
    loaded = EngineProfile.load(path)
    assert loaded == profile
    assert loaded.predict_prefill_ms([100, 200]) == profile.predict_prefill_ms([100, 200])


def test_round_trip_of_coefficients(tmp_path):
    profile = EngineProfile.from_coefficients(
        model="llama", hardware=HW, block_size=16, kv_bytes_per_token=131072,
        prefill=PrefillCoefficients(a_ms=10, b_ms_per_token=0.1, c_ms_per_token_sq=0),
        decode=DecodeCoefficients(a_ms=8, b_ms_per_context_token=0.001, c_ms_per_request=0.2),
    )
    profile.save(tmp_path / "c.yaml")
    text = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert "coefficients" in text["prefill"] and "points" not in text["prefill"]
    assert EngineProfile.load(tmp_path / "c.yaml") == profile
    assert profile.predict_prefill_ms([100]) == pytest.approx(20.0)
    assert profile.predict_decode_step_ms(10, 1000) == pytest.approx(8 + 1 + 2)


def test_exact_fit_recovers_coefficients():
    profile = synthetic_profile(noise=0.0)
    k = profile.prefill_coefficients
    assert (k.a_ms, k.b_ms_per_token, k.c_ms_per_token_sq) == pytest.approx(TRUE_PREFILL, rel=1e-6)
    d = profile.decode_coefficients
    assert (d.a_ms, d.b_ms_per_context_token, d.c_ms_per_request) == pytest.approx(TRUE_DECODE, rel=1e-6)


def test_noisy_fit_predicts_within_a_few_percent():
    profile = synthetic_profile(noise=0.03, seed=3)
    a, b, c = TRUE_PREFILL
    for n in (100, 800, 3000):
        assert profile.predict_prefill_ms([n]) == pytest.approx(a + b * n + c * n * n, rel=0.05)
    da, db, dc = TRUE_DECODE
    assert profile.predict_decode_step_ms(64, 64 * 2000) == pytest.approx(da + db * 64 * 2000 + dc * 64, rel=0.05)


def test_fit_never_goes_negative():
    # Points that a free least-squares fit would bend into a negative quadratic term.
    points = [PrefillPoint(prompt_tokens=n, ttft_ms=t) for n, t in ((100, 60.0), (1000, 520.0), (2000, 990.0), (4000, 1900.0))]
    profile = EngineProfile.from_points(model="m", hardware=HW, block_size=16, kv_bytes_per_token=1,
                                        prefill_points=points, decode_points=synthetic_profile().decode_points)
    k = profile.prefill_coefficients
    assert min(k.a_ms, k.b_ms_per_token) > 0 and k.c_ms_per_token_sq == 0
    assert profile.predict_prefill_ms([100_000]) > profile.predict_prefill_ms([4000])


def test_throughput_helpers():
    profile = synthetic_profile()
    assert profile.prefill_tokens_per_s(1000) == pytest.approx(1000 / profile.predict_prefill_ms([1000]) * 1000)
    assert profile.decode_tokens_per_s(32, 1000) == pytest.approx(32 / profile.predict_decode_step_ms(32, 32_000) * 1000)
    assert profile.decode_tokens_per_s(32, 1000) > profile.decode_tokens_per_s(1, 1000)
    assert profile.kv_bytes(17) == 32 * 1024  # whole blocks of 16


def test_example_profile_matches_the_measured_cpu_numbers():
    profile = EngineProfile.load(EXAMPLE_PROFILE)
    assert profile.model == "smollm2-135m-instruct" and profile.block_size % 32 == 0
    assert 230 < profile.decode_tokens_per_s(16, 96) < 300  # ENVIRONMENT.md: ~260 tokens/s, 16 x 64 tokens
    assert profile.predict_prefill_ms([96]) < 520  # a lone prompt is well under the loaded colocated TTFT


def write(tmp_path, data, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def good_dict():
    return synthetic_profile().to_dict()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.pop("kv_bytes_per_token"), "kv_bytes_per_token"),
    (lambda d: d["prefill"].update(points=d["prefill"]["points"][:2]), "at least 3 points"),
    (lambda d: d["decode"]["points"][0].update(step_ms=-1), "decode.points.0.step_ms"),
    (lambda d: d["decode"].update(coefficients={"a_ms": 1, "b_ms_per_context_token": 0, "c_ms_per_request": 0}),
     "not both"),
    (lambda d: d.update(colour="blue"), "colour"),
])
def test_bad_files_say_what_is_wrong(tmp_path, change, message):
    data = good_dict()
    change(data)
    with pytest.raises(ConfigError, match=message) as info:
        EngineProfile.load(write(tmp_path, data))
    assert str(tmp_path) in str(info.value)


def test_points_that_cannot_determine_the_fit(tmp_path):
    data = good_dict()
    data["decode"]["points"] = [{"batch_size": 4, "total_context_tokens": c, "step_ms": 10 + c / 100} for c in (100, 200, 400)]
    with pytest.raises(ConfigError, match="vary both batch size and context"):
        EngineProfile.load(write(tmp_path, data))


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read profile"):
        EngineProfile.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        EngineProfile.load(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="neither valid YAML nor JSON"):
        EngineProfile.load(write(tmp_path, "version: [1\n"))


# --- interference of tiers on a shared host (optional `interference` section) ----------------------------

INTERFERENCE = [
    InterferencePoint(prompt_tokens=1024, decode_step_ms_alone=40.0, decode_step_ms_during_prefill=60.0,
                      decode_steps_during_prefill=40, prefill_ms_alone=2000.0, prefill_ms_during_decode=2400.0),
    InterferencePoint(prompt_tokens=128, decode_step_ms_alone=40.0, decode_step_ms_during_prefill=50.0,
                      decode_steps_during_prefill=12, prefill_ms_alone=250.0, prefill_ms_during_decode=275.0),
]


def interfering_profile() -> EngineProfile:
    base = synthetic_profile()
    return EngineProfile.from_points(model="m", hardware=HW, block_size=16, kv_bytes_per_token=1024,
                                     prefill_points=base.prefill_points, decode_points=base.decode_points,
                                     kv_capacity_tokens=100_000, interference=INTERFERENCE)


def test_interference_factors_are_the_measured_ratios_interpolated_by_prompt_length():
    profile = interfering_profile()
    assert [p.prompt_tokens for p in profile.interference] == [128, 1024]  # sorted
    assert profile.decode_slowdown(128) == pytest.approx(1.25)
    assert profile.decode_slowdown(1024) == pytest.approx(1.5)
    assert profile.decode_slowdown(576) == pytest.approx(1.375)  # halfway
    assert profile.decode_slowdown(32) == pytest.approx(1.25) and profile.decode_slowdown(8192) == pytest.approx(1.5)
    assert profile.prefill_slowdown(128) == pytest.approx(1.1) and profile.prefill_slowdown(1024) == pytest.approx(1.2)


def test_without_interference_points_nothing_slows_down():
    profile = synthetic_profile()
    assert profile.interference == ()
    assert profile.decode_slowdown(1024) == 1.0 and profile.prefill_slowdown(1024) == 1.0
    assert "interference" not in profile.to_dict()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_interference_round_trips(tmp_path, suffix):
    profile = interfering_profile()
    profile.save(tmp_path / f"p{suffix}")
    loaded = EngineProfile.load(tmp_path / f"p{suffix}")
    assert loaded == profile and loaded.decode_slowdown(1024) == pytest.approx(1.5)


def test_an_older_file_without_interference_still_loads(tmp_path):
    # A version-1 file as written before the section existed (also the shipped example).
    data = good_dict()
    assert "interference" not in data
    assert EngineProfile.load(write(tmp_path, data)).decode_slowdown(512) == 1.0
    assert EngineProfile.load(EXAMPLE_PROFILE).interference == ()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(interference={"points": []}), "interference.points"),
    (lambda d: d["interference"]["points"][0].update(decode_step_ms_alone=0), "decode_step_ms_alone"),
    (lambda d: d["interference"]["points"][0].update(prompt_tokens=1024), "one interference point per prompt length"),
    (lambda d: d["interference"]["points"][0].update(speed="fast"), "speed"),
])
def test_bad_interference_sections_say_what_is_wrong(tmp_path, change, message):
    data = interfering_profile().to_dict()
    change(data)
    with pytest.raises(ConfigError, match=message):
        EngineProfile.load(write(tmp_path, data))
