"""Renders of the chart, one per values case per session."""

from __future__ import annotations

import pytest

from tests.helm.chart import CASES, Rendered, Renders


@pytest.fixture(scope="session")
def renders() -> Renders:
    return Renders()


@pytest.fixture(scope="session", params=CASES)
def rendered(request: pytest.FixtureRequest, renders: Renders) -> Rendered:
    """The chart rendered with each values case in turn (default values and every ci file)."""
    case: str = request.param
    return renders[case]
