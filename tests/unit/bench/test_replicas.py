from pdserve.bench.outcome import Outcome
from pdserve.bench.replicas import flatten_rows, replicas_by_tier, write_csv, write_plot


def test_replicas_read_from_pools_as_dict_or_list():
    as_dict = {"pools": {"prefill": {"desired_replicas": 3, "actual_replicas": 2},
                         "decode": {"desired_replicas": 1, "workers": [{}, {}]}}}
    as_list = {"pools": [{"tier": "prefill", "desired": 3, "replicas": 2}]}
    assert replicas_by_tier(as_dict) == {"prefill": {"desired": 3, "actual": 2}, "decode": {"desired": 1, "actual": 2}}
    assert replicas_by_tier(as_list) == {"prefill": {"desired": 3, "actual": 2}}
    assert replicas_by_tier({}) == {}


def test_table_csv_and_plot(tmp_path):
    rows = [{"t_s": float(t), "phase": t // 2, "offered_rate_per_s": 1.0 + t, "error": "",
             "tiers": {"prefill": {"desired": 1 + t // 2, "actual": 1}, "decode": {"desired": 1, "actual": 1}}}
            for t in range(1, 5)]
    sent_s = (0.6, 0.7, 1.6, 1.7, 1.8, 2.6)
    outcomes = [Outcome(i, 0, 0.0, 1, 1, start_s=100.0 + t) for i, t in enumerate(sent_s)]
    table = flatten_rows(rows, outcomes, start_s=100.0)
    assert [r["sent_rate_per_s"] for r in table] == [2.0, 3.0, 1.0, 0.0]  # windows centred on t_s
    assert table[3]["prefill_desired"] == 3 and table[0]["decode_actual"] == 1
    write_csv(table, tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("t_s,phase,offered_rate_per_s,sent_rate_per_s,decode_desired") and len(lines) == 5
    write_plot(table, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
