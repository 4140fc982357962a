"""Shared fixtures: where the real sample data lives, and a marker to skip without it.

Tests marked ``slow`` (recorded training runs, minutes to an hour on 2 cores) are skipped with a reason
unless ``PERCEPTION_SLOW=1``; the default ``make test`` runs everything else.
"""
import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"real sample data not present at {DATA}")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.exists():
        pytest.skip(f"real sample data not present at {DATA}")
    return DATA


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PERCEPTION_SLOW"):
        return
    skip = pytest.mark.skip(reason="a long recorded run (minutes or more on 2 cores); set PERCEPTION_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
