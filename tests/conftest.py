import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- shared test data (data pipeline tests) -------------------------------------------
def shared_data_dir() -> Path:
    """GPT2LAB_DATA, or ../shared/data next to the repository root."""
    return Path(os.environ.get("GPT2LAB_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set GPT2LAB_DATA)")
    return path
# --- end shared test data -------------------------------------------------------------
