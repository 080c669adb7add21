"""Every fault of a real cluster, done for real on the multi-host cluster (faults.py says what each does):
no request is lost, none ends in an error, every answer is token-identical to the no-fault greedy answer, and
the cluster is full again afterwards. The counts go to the run's closing summary ("measured"); the README's
fault table quotes `benchmarks/chaos.py`, which runs the same scenarios.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import faults
from faults import Chaos

pytestmark = [pytest.mark.multihost, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def chaos(multihost) -> Iterator[Chaos]:
    chaos = Chaos.start(multihost)
    try:
        yield chaos
    finally:
        chaos.close()


def _clean(counts, summary_line) -> None:
    summary_line(counts.line())
    assert counts.lost == 0, counts
    assert counts.errors == 0, counts
    assert counts.identical == counts.in_flight, counts


@pytest.mark.parametrize("num_decode", [2, 1])
def test_decode_engine_killed_mid_stream(chaos, num_decode, summary_line):
    _clean(faults.decode_engine_killed(chaos, num_decode), summary_line)


def test_prefill_engine_killed_during_prefill(chaos, summary_line):
    _clean(faults.prefill_engine_killed(chaos), summary_line)


def test_handoff_lost_prefill_worker_dies_before_the_kv_arrived(chaos, summary_line):
    counts = faults.handoff_lost(chaos)
    _clean(counts, summary_line)
    assert counts.recomputed == counts.in_flight  # no KV came: every decode worker computed its prompt


def test_a_decode_host_lost_and_back(chaos, summary_line):
    _clean(faults.host_lost(chaos), summary_line)


def test_prefill_and_decode_hosts_partitioned_then_healed(chaos, summary_line):
    counts, resumed_s = faults.partitioned(chaos)
    _clean(counts, summary_line)
    summary_line(f"KV transferred again {resumed_s:.1f} s after the partition healed; {counts.recomputed} of the "
                 f"{len(faults.LATE_PROMPTS)} requests sent during it recomputed")
    assert counts.longest_gap_s < faults.PARTITION_S + 30  # nothing hung


@pytest.mark.parametrize("kind", faults.KV_FAULTS)
def test_kv_faults_on_every_third_transfer_under_load(chaos, kind, summary_line):
    counts = faults.kv_faults_under_load(chaos, kind)
    _clean(counts, summary_line)  # 0 wrong tokens, whatever the fault did
    if kind != "stall":  # a stalled transfer may also complete late rather than time out (see the README)
        assert counts.recomputed >= len(faults.LOAD_PROMPTS[kind]) // faults.KV_FAULT_EVERY


def test_controller_killed(chaos, summary_line):
    _clean(faults.controller_killed(chaos), summary_line)


def test_scale_down_and_up_during_engine_kill_and_partition(chaos, summary_line):
    _clean(faults.scale_during_faults(chaos), summary_line)
