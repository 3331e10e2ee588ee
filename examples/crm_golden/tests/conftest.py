"""Golden suites replay in the world their operation needs (see `crm_golden.worlds`)."""

from __future__ import annotations

import pytest
from crm_golden.worlds import world_for
from crm_pipeline.main import data_file

from contractspec.testing.golden import ExecutorFactory, default_executor_factory


@pytest.fixture
def contractspec_executor_factory(request: pytest.FixtureRequest) -> ExecutorFactory:
    """The world of the module's golden suite (memory ports and AllowAll otherwise)."""
    if not data_file().is_file():
        pytest.skip(f"CDNOW data not found at {data_file()}")
    suite = getattr(request.module, "SUITE", None)
    if suite is None:
        return default_executor_factory
    factory: ExecutorFactory = world_for(suite.operation)
    return factory
