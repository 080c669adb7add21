"""The published comparisons stay within the bounds docs/simulator.md states."""

import pytest

from simulations.validate import (
    BOUNDS,
    load_splitwise,
    out_of_bounds,
    validate_power_cap,
    validate_splitwise,
)


@pytest.fixture(scope="module")
def rows():
    return load_splitwise()


def test_splitwise_errors_within_bounds(rows):
    result = validate_splitwise(rows)
    assert result["rows"] > 100 and result["rows_excluded_unphysical"] <= 4
    for key in ("splitwise_roofline_prompt_mape", "splitwise_roofline_token_mape",
                "splitwise_calibrated_prompt_mape", "splitwise_calibrated_token_mape"):
        assert result[key] <= BOUNDS[key], key
    # calibration on Llama2-70B must help on BLOOM-176B, which it never saw
    assert result["splitwise_calibrated_token_mape"] < result["splitwise_roofline_token_mape"]


def test_power_cap_slows_prefill_not_decode(rows):
    result = validate_power_cap(rows)
    assert result["power_cap_prompt_predicted"] > 1.1 and result["power_cap_token_predicted"] == 1.0
    assert result["power_cap_prompt_error"] <= BOUNDS["power_cap_prompt_error"]
    assert result["power_cap_token_error"] <= BOUNDS["power_cap_token_error"]


def test_out_of_bounds_names_the_failing_comparison():
    fake = {key: 0.0 for key in BOUNDS}
    assert out_of_bounds(fake) == []
    fake["power_cap_prompt_error"] = 0.5
    assert out_of_bounds(fake) == ["power_cap_prompt_error"]
