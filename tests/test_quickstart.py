"""The quickstart as a user runs it (shortened), and the packaging it relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli_helpers import gpt2lab
from gpt2lab.quickstart import asset

REPO = Path(__file__).resolve().parent.parent


def test_shipped_quickstart_config_is_the_repo_one():
    # gpt2lab/assets/quickstart.yaml is what an installed package runs; configs/ is what users read.
    assert asset("quickstart.yaml").read_text() == (REPO / "configs" / "quickstart.yaml").read_text()


@pytest.mark.slow
def test_quickstart_runs_end_to_end_with_compile(tmp_path):
    """prepare -> train (compiled, as the shipped config says) -> val loss -> checkpoint -> samples."""
    shipped = yaml.safe_load(asset("quickstart.yaml").read_text())
    assert shipped["train"]["compile"] is True  # the path exercised below is the default one
    run = tmp_path / "qs"
    proc = gpt2lab("quickstart", "--out", run, "train.max_steps=3", "eval.every=0", "eval.val_tokens=2048",
                   "eval.sample_tokens=8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "quickstart done: 3 steps" in out
    val = float(out.split("val loss ")[-1].split()[0])
    assert 0 < val < 11.5  # a real number from a real evaluation, near ln(50257) after 3 steps
    assert out.count("sample: 'ROMEO:") == shipped["eval"]["sample_count"]
    assert (run / "checkpoints" / "step_00000003" / "model.safetensors").is_file()
    assert (run / "data" / "manifest.json").is_file()

    # Running it again continues the same run instead of failing on the existing checkpoint.
    proc = gpt2lab("quickstart", "--out", run, "train.max_steps=4", "train.compile=false", "eval.every=0",
                   "eval.val_tokens=2048", "eval.sample_tokens=8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "quickstart done: 4 steps" in proc.stdout


def test_package_ships_vocab_and_corpus():
    from gpt2lab.tokenizer import VOCAB_FILE

    assert asset(VOCAB_FILE).stat().st_size > 800_000
    assert asset("tinyshakespeare.txt.gz").stat().st_size > 400_000
