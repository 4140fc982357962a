"""Shared fixtures: where the real sample data lives, and a marker to skip without it."""
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"real sample data not present at {DATA}")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.exists():
        pytest.skip(f"real sample data not present at {DATA}")
    return DATA
