"""Profiling: measuring a timing engine built from known coefficients recovers them; the CLI writes a
file the planner can load; the profile file's optional `num_layers`."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.profiles import DEFAULT_NUM_LAYERS, EXAMPLE_PROFILE, SYNTHETIC_PROFILE, EngineProfile, HardwareInfo
from pdserve.cli import main
from workers.engine.base import EngineOutput
from workers.profiling import ProfileGrid, ProfileTarget, describe_cpu, parse_cores, profile_engine

HARDWARE = HardwareInfo(name="test", kind="cpu", count=1)
SMALL_GRID = ProfileGrid(prompt_lengths=(16, 64, 256), prefill_batches=((4, 32),), decode_batch_sizes=(1, 4),
                         decode_context_lengths=(32, 256), decode_steps=5, repeats=1)


def coefficients(profile):
    p, d = profile.prefill_coefficients, profile.decode_coefficients
    return (p.a_ms, p.b_ms_per_token, p.c_ms_per_token_sq), (d.a_ms, d.b_ms_per_context_token, d.c_ms_per_request)


async def test_profiling_a_timing_engine_recovers_its_coefficients(make_engine, make_profile, clock):
    source = make_profile(kv_capacity_tokens=100_000)
    engine = await make_engine(profile=source, clock=clock)
    measured = await profile_engine(engine, engine.info, ProfileTarget("test-model", HARDWARE, 2048, 64, num_layers=4),
                                    clock=clock)
    (pa, pb, pc), (da, db, dc) = coefficients(source)
    (ma, mb, mc), (na, nb, nc) = coefficients(measured)
    assert (ma, mb, mc) == pytest.approx((pa, pb, pc), rel=0.02)
    assert (na, nb, nc) == pytest.approx((da, db, dc), rel=0.02)
    assert len(measured.prefill_points) == 9 and len(measured.decode_points) == 13
    assert {p.batch_size for p in measured.prefill_points} == {1, 4, 8}
    assert measured.kv_bytes_per_token == source.kv_bytes_per_token
    assert measured.kv_capacity_tokens == engine.info.num_total_blocks * engine.info.block_size
    assert measured.num_layers == 4 and measured.block_size == engine.info.block_size


async def test_prompts_the_engine_splits_over_steps_are_dropped(make_engine, make_profile, clock):
    # The engine computes 100 tokens a step, but is said to take 2048: 4 x 32 prompts need two steps.
    engine = await make_engine(profile=make_profile(), clock=clock, max_num_batched_tokens=100)
    measured = await profile_engine(engine, engine.info, ProfileTarget("m", HARDWARE, 2048, 64), SMALL_GRID, clock=clock)
    assert [p.batch_size for p in measured.prefill_points] == [1, 1, 1]  # the 4 x 32 point: never in one step


class SplittingEngine:
    """Like vLLM given four prompts at once: the first runs alone in a 60 ms step, the other three in
    the next step, which ends at 150 ms."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.count = 0

    async def _run(self, index):
        await asyncio.sleep(0)
        self.clock.now = 0.060 if index == 0 else 0.150
        yield EngineOutput([300], True, "length")

    def generate(self, request):
        self.count += 1
        return self._run(self.count - 1)


async def test_a_batch_the_engine_splits_is_measured_by_its_last_step(clock):
    from workers.profiling import _Prompts, measure_prefill

    assert await measure_prefill(SplittingEngine(clock), _Prompts(), 4, 64, clock) == (3, pytest.approx(90.0))


async def test_passes_keep_each_points_fastest_measurement(make_engine, make_profile, clock):
    engine = await make_engine(profile=make_profile(), clock=clock)
    slowed = []

    def slow_down_the_first_pass(fake):
        if len(slowed) < 30:  # a busy neighbour: the first steps (warm-up, the first prefill points) take 50 ms longer
            slowed.append(1)
            fake.now += 0.05

    clock.on_sleep = slow_down_the_first_pass
    grid = ProfileGrid(**{**SMALL_GRID.__dict__, "passes": 2})
    measured = await profile_engine(engine, engine.info, ProfileTarget("m", HARDWARE, 2048, 64), grid, clock=clock)
    source = make_profile()
    assert len(measured.prefill_points) == 4 and len(measured.decode_points) == 4
    for point in measured.prefill_points:
        assert point.ttft_ms == pytest.approx(source.predict_prefill_ms([point.prompt_tokens] * point.batch_size))


async def test_decode_warmup_steps_are_left_out_of_the_point(make_engine, make_profile, clock):
    # A tier that was idle: its first 6 steps take 50 ms longer (the prefill step is the first sleep).
    from workers.profiling import _Prompts, measure_decode

    source = make_profile()
    engine = await make_engine(profile=source, clock=clock)
    sleeps = []

    def cold_start(fake):
        sleeps.append(1)
        if 2 <= len(sleeps) <= 7:
            fake.now += 0.05

    clock.on_sleep = cold_start
    warm = await measure_decode(engine, _Prompts(), 1, 64, 5, clock, warmup_steps=6)
    assert warm.step_ms == pytest.approx(source.predict_decode_step_ms(1, warm.total_context_tokens), rel=1e-3)
    # 14 tokens: the first, 6 steps let pass, then steps 7..13 measured; before step j the cache holds
    # 64 + 1 + j - 2 tokens, at the middle step (10): 73
    assert warm.total_context_tokens == 73
    sleeps.clear()
    cold = await measure_decode(engine, _Prompts(seed=1), 1, 64, 5, clock)
    assert cold.step_ms > source.predict_decode_step_ms(1, cold.total_context_tokens) + 40  # the slow steps counted


def test_the_grid_keeps_what_the_engine_can_run():
    grid = ProfileGrid().fitted(max_model_len=512, max_batched_tokens=512, max_num_seqs=8, kv_capacity_tokens=2048)
    assert max(grid.prompt_lengths) <= 511
    assert all(b <= 8 and b * n <= 512 for b, n in grid.prefill_batches)
    assert all(b <= 8 for b, _ in grid.decode_points())
    assert all(c + grid.decode_steps + 3 <= 512 and b * c <= 1024 for b, c in grid.decode_points())


def test_cli_profiles_the_timing_engine_into_a_loadable_file(tmp_path, make_profile, capsys):
    source = tmp_path / "source.yaml"
    make_profile(prefill=(2.0, 0.01, 1e-6), decode=(2.0, 5e-4, 0.1), kv_capacity_tokens=50_000).save(source)
    out = tmp_path / "measured.yaml"
    code = main(["profile", "--engine", "timing", "--profile", str(source), "--out", str(out), "--no-progress",
                 "--prompt-lengths", "16,64,256", "--prefill-batches", "4x32", "--decode-batches", "1,4",
                 "--decode-contexts", "32,256", "--decode-steps", "5", "--repeats", "1", "--max-model-len", "1024"])
    assert code == 0
    profile = EngineProfile.load(out)
    assert profile.model == "test-model" and profile.num_layers == 4 and profile.block_size == 16
    assert len(profile.prefill_points) == 4 and len(profile.decode_points) == 4
    assert "timing engine" in profile.hardware.description
    assert yaml.safe_load(out.read_text())["version"] == 1
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--engine", "timing"],  # no --profile
    ["--profile", "x.yaml"],  # --profile without the timing engine
    ["--engine", "timing", "--profile", "missing.yaml"],
    ["--engine", "timing", "--profile", "x.yaml", "--prompt-lengths", "a,b"],
    ["--engine", "timing", "--profile", "x.yaml", "--prefill-batches", "4"],
])
def test_cli_refuses_bad_flags(tmp_path, argv, capsys):
    assert main(["profile", "--out", str(tmp_path / "o.yaml"), *argv]) == 2
    assert "error:" in capsys.readouterr().err


# ---- the profile file's num_layers ---------------------------------------------------------------------


def test_num_layers_round_trips_and_defaults(tmp_path, make_profile):
    profile = make_profile(num_layers=4)
    profile.save(tmp_path / "p.yaml")
    assert EngineProfile.load(tmp_path / "p.yaml").num_kv_layers == 4
    assert profile.kv_bytes_per_token_per_layer == 384
    assert make_profile(num_layers=None, kv_bytes_per_token=23040).num_kv_layers == DEFAULT_NUM_LAYERS  # 23040 / 32
    assert make_profile(num_layers=None, kv_bytes_per_token=3 * 31).num_kv_layers == 31  # largest divisor below 32
    with pytest.raises(ConfigError, match="num_layers 7 does not divide"):
        make_profile(num_layers=7, kv_bytes_per_token=1536)


def test_cores_and_hardware_description():
    assert parse_cores("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(ValueError):
        parse_cores("x")
    hardware = describe_cpu([1], "vLLM test")
    assert (hardware.name, hardware.kind, hardware.count) == ("cpu-1core", "cpu", 1)
    assert "core(s) 1" in hardware.description and "vLLM test" in hardware.description


def test_the_shipped_profiles_load():
    measured, synthetic = EngineProfile.load(EXAMPLE_PROFILE), EngineProfile.load(SYNTHETIC_PROFILE)
    assert measured.model == synthetic.model == "smollm2-135m-instruct"
    assert "SYNTHETIC" not in measured.hardware.description and "SYNTHETIC" in synthetic.hardware.description
    assert measured.num_kv_layers == 30 and measured.kv_bytes_per_token_per_layer == 768  # SmolLM2: 30 layers
