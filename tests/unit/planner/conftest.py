"""Shared fixtures of the planner tests (helpers live in `planner_scenarios`)."""

import pytest

from orchestrator.profiles import SYNTHETIC_PROFILE, EngineProfile


@pytest.fixture(scope="session")
def profile() -> EngineProfile:
    """The synthetic SmolLM2-135M CPU profile the scenarios were written against (decode step time grows
    with the batch, so decode sizing has something to decide)."""
    return EngineProfile.load(SYNTHETIC_PROFILE)
