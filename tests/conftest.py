"""Shared pytest configuration. Integration fixtures live in testbed_fixtures.py."""

from pathlib import Path

import pytest

pytest_plugins = ["testbed_fixtures"]

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
