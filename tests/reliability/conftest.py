"""The reliability suite's figures: each test adds one summary line, printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Callable[[str], None]]:
    """`figures(line)`: print a test's summary line now and again in the run's terminal summary."""

    def add(line: str) -> None:
        print(line, flush=True)
        request.node.user_properties.append(("figures", line))

    yield add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            lines += [v for k, v in getattr(report, "user_properties", ()) if k == "figures"]
    if lines:
        terminalreporter.section("reliability figures")
        for line in lines:
            terminalreporter.write_line(line)
