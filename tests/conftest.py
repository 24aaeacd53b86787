"""Test-wide rules: privileged tests need root, and under CI=true none may be skipped."""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root and network namespaces (run as root)")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    # A privileged test that silently vanishes proves nothing: in CI a skip is a failure.
    if IN_CI and report.skipped and "privileged" in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"privileged test skipped under CI=true: {report.longrepr}"
    return None
