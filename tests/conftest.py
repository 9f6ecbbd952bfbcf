import os
from pathlib import Path

import pytest

from cli_helpers import DATA, TOKENIZER_CORPUS

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests never reach the Hugging Face hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Under CI, hypothesis draws the same examples every run, so whether main lands never depends on a
# random draw; elsewhere each run explores new inputs (and a failure found there gets fixed).
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True)
    settings.load_profile("ci")


# --- test data: small files in tests/data (data/PROVENANCE.md), nothing outside the repository --
@pytest.fixture(scope="session")
def small_data() -> Path:
    assert DATA.is_dir(), f"{DATA} missing (regenerate it with tests/data/make_data.py)"
    return DATA


# --- model / train / resume / cli test fixtures ---------------------------------------
@pytest.fixture(scope="session")
def shakespeare_head(small_data) -> Path:
    """The first 100 KB of tinyshakespeare as a .txt file (about 30k tokens: enough for micro runs)."""
    return small_data / "tinyshakespeare_head.txt"


@pytest.fixture(scope="session")
def small_shards(shakespeare_head, tmp_path_factory) -> Path:
    """Train/val shards of ``shakespeare_head`` (prepared once per session, read-only for tests)."""
    from gpt2lab.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "data"
    prepare([shakespeare_head], out, val_fraction=0.1, workers=1, log=lambda _msg: None)
    return out


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory):
    """A randomly initialised micro model (seed 0) saved as a gpt2lab run folder."""
    import torch

    from gpt2lab.checkpoint import save_checkpoint
    from gpt2lab.config import from_dict
    from gpt2lab.model import GPT

    torch.manual_seed(0)
    cfg = from_dict({"model": {"preset": "micro"}})
    run = tmp_path_factory.mktemp("micro_run")
    save_checkpoint(run, 1, GPT(cfg.model), cfg, {})
    return run


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory) -> Path:
    """A byte-level BPE of 8,192 tokens trained on the small Wikipedia and Shakespeare files (a folder)."""
    pytest.importorskip("tokenizers")
    from gpt2lab.tokenizer_train import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer") / "tok8k"
    train_tokenizer(list(TOKENIZER_CORPUS), 8192, out, log=lambda _msg: None)
    return out
