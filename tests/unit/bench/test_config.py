import argparse

import pytest

from orchestrator.errors import ConfigError
from pdserve.cli import bench as bench_cli
from pdserve.bench.config import BenchConfig


def _parse(*flags):
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers())
    return parser.parse_args(["bench", "--target", "localhost:50051", "--out", "x.json", *flags])


def test_valid_synthetic_config_fills_defaults():
    config = BenchConfig.from_args(_parse("--rate", "2", "--api-key", "sk-secret"))
    assert config.rate_per_s == 2 and config.lengths() == (128, 64)
    assert config.public_dict()["api_key"] == "<redacted>"


@pytest.mark.parametrize("flags, message", [
    (("--rate", "0"), "--rate"),
    (("--rate", "-1"), "--rate"),
    ((), "--rate is required"),
    (("--rate", "1", "--num-requests", "0"), "--num-requests"),
    (("--trace", "t.csv", "--prompt-tokens", "5"), "--trace"),
    (("--trace", "t.csv", "--rate", "1", "--time-scale", "2"), "not both"),
    (("--trace", "t.csv", "--ramp", "--rate", "1"), "--ramp"),
    (("--rate", "1", "--ramp-lengths", "10x2"), "--ramp only"),
    (("--rate", "1", "--ramp", "--endpoint", "http"), "--status-target"),
    (("--rate", "1", "--token-id-range", "9,3"), "--token-id-range"),
    (("--rate", "1", "--ramp", "--ramp-shape", "1,0"), "--ramp-shape"),
])
def test_bad_flags_are_config_errors_naming_the_flag(flags, message):
    with pytest.raises(ConfigError, match=message):
        BenchConfig.from_args(_parse(*flags))


def test_bad_target_is_refused():
    args = _parse("--rate", "1")
    args.target = "localhost"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        BenchConfig.from_args(args)
