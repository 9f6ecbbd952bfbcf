import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests never reach the Hugging Face hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


# --- model / train / resume / cli test fixtures ---------------------------------------
SHAKESPEARE_HEAD_CHARS = 100_000  # about 30k tokens: enough for micro runs, quick to prepare


@pytest.fixture(scope="session")
def shakespeare_head(shared_data, tmp_path_factory) -> Path:
    """The first ~100 KB of tinyshakespeare as a .txt file."""
    src = shared_data / "corpora" / "tinyshakespeare" / "input.txt"
    if not src.is_file():
        pytest.skip(f"{src} missing")
    dst = tmp_path_factory.mktemp("shakespeare") / "shakespeare_head.txt"
    dst.write_text(src.read_text(encoding="utf-8")[:SHAKESPEARE_HEAD_CHARS], encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def small_shards(shakespeare_head, tmp_path_factory) -> Path:
    """Train/val shards of ``shakespeare_head`` (prepared once per session, read-only for tests)."""
    from gpt2lab.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "data"
    prepare([shakespeare_head], out, val_fraction=0.1, workers=1, log=lambda _msg: None)
    return out
