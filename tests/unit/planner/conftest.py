"""Shared fixtures of the planner tests (helpers live in `planner_scenarios`)."""

import pytest

from orchestrator.profiles import EXAMPLE_PROFILE, EngineProfile


@pytest.fixture(scope="session")
def profile() -> EngineProfile:
    """The example SmolLM2-135M CPU profile."""
    return EngineProfile.load(EXAMPLE_PROFILE)
