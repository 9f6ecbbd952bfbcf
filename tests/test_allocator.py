"""The gpt2lab command runs on tcmalloc where it is installed (gpt2lab/allocator.py: it doubles CPU
training speed on the CI machine), says so in environment.json, and GPT2LAB_ALLOCATOR=system keeps
glibc's. Where tcmalloc is not installed, "auto" must fall back to glibc's and still run."""

import json

import pytest

from cli_helpers import gpt2lab
from gpt2lab.allocator import find_tcmalloc, in_use


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["auto", "system"])
def test_the_command_runs_on_tcmalloc_where_installed(small_shards, tmp_path, setting):
    run = tmp_path / "run"
    r = gpt2lab("train", "model.preset=micro", f"data.dir={small_shards}", f"train.run_dir={run}", "train.device=cpu",
                "train.max_steps=2", "train.micro_batch=2", "train.seq_len=32", "eval.every=-1", "eval.sample_every=-1",
                env={"GPT2LAB_ALLOCATOR": setting, "LD_PRELOAD": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    expected = "tcmalloc" if setting == "auto" and find_tcmalloc() else "system"
    assert json.loads((run / "environment.json").read_text())["allocator"] == expected
    assert "Traceback" not in r.stderr


def test_a_caller_of_the_library_keeps_its_allocator():
    """Only the command line re-runs itself: importing gpt2lab or calling cli.main(argv) never does."""
    from gpt2lab.cli import main

    assert main(["config", "--doc"]) == 0
    assert in_use() in ("system", "tcmalloc")
