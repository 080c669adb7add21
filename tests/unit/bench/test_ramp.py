import pytest

from pdserve.bench import workload
from pdserve.bench.ramp import PhaseLengths, RampSchedule, parse_lengths, parse_shape


def test_schedule_rates_phases_and_duration():
    schedule = RampSchedule(2.0, (0.5, 2.0, 4.0, 2.0, 0.5), phase_s=10.0)
    assert schedule.rates_per_s == (1.0, 4.0, 8.0, 4.0, 1.0)
    assert schedule.duration_s == 50.0
    assert schedule.expected_requests == pytest.approx(180.0)
    assert [schedule.phase_at(t) for t in (-1, 0, 9.99, 10, 25, 49.9, 60)] == [0, 0, 0, 1, 2, 4, 4]
    assert [schedule.rate_at(t) for t in (0, 15, 25, 49.9, 50)] == [1.0, 4.0, 8.0, 1.0, 0.0]


def test_fitting_schedule_expects_the_requested_count():
    schedule = RampSchedule.fitting(3.0, (1.0, 3.0, 1.0), num_requests=300)
    assert schedule.expected_requests == pytest.approx(300)
    assert schedule.phase_s == pytest.approx(20.0)


def test_ramped_workload_rises_then_falls_with_phase_lengths():
    schedule = RampSchedule(5.0, (0.5, 4.0, 0.5), phase_s=40.0)
    lengths = (PhaseLengths(1024, 8), PhaseLengths(64, 256), PhaseLengths(32, 16))
    requests = workload.ramped(schedule, lengths, max_requests=10_000, seed=2)
    counts = [sum(r.phase == p for r in requests) for p in range(3)]
    assert counts[1] > 4 * counts[0] and counts[1] > 4 * counts[2]
    assert all((r.prompt_tokens, r.output_tokens) == (lengths[r.phase].prompt_tokens, lengths[r.phase].output_tokens)
               for r in requests)
    assert [r.index for r in requests] == list(range(len(requests)))


def test_parsing_shape_and_lengths():
    assert parse_shape("0.5,2,4") == (0.5, 2.0, 4.0)
    assert parse_lengths("1024x8", 3) == (PhaseLengths(1024, 8),) * 3
    assert parse_lengths("10x2,20X4", 2) == (PhaseLengths(10, 2), PhaseLengths(20, 4))
    for bad in ("", "1,,2", "0,1", "-1", "a"):
        with pytest.raises(ValueError):
            parse_shape(bad)
    for bad in ("10", "10x0", "ax2", "1x2,3x4"):
        with pytest.raises(ValueError):
            parse_lengths(bad, 3)
