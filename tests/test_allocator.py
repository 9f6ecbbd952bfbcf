"""The gpt2lab command runs on a fast allocator that keeps freed memory (gpt2lab/allocator.py: on the CI machine it
more than doubles CPU training speed): mimalloc, which the install brings on Linux, or tcmalloc where the system has
it; environment.json says which; GPT2LAB_ALLOCATOR picks one, and `system` keeps glibc's."""

import json
import sys

import pytest

from cli_helpers import gpt2lab
from gpt2lab.allocator import choose, find_mimalloc, in_use


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["auto", "mimalloc", "system"])
def test_the_command_runs_on_the_allocator_asked_for(small_shards, tmp_path, setting):
    run = tmp_path / "run"
    r = gpt2lab("train", "model.preset=micro", f"data.dir={small_shards}", f"train.run_dir={run}", "train.device=cpu",
                "train.max_steps=2", "train.micro_batch=2", "train.seq_len=32", "eval.every=-1", "eval.sample_every=-1",
                env={"GPT2LAB_ALLOCATOR": setting, "LD_PRELOAD": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    chosen = choose(setting)
    assert json.loads((run / "environment.json").read_text())["allocator"] == (chosen[0] if chosen else "system")
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the mimalloc wheel is a Linux dependency")
def test_the_install_brings_mimalloc():
    """Without any system package: `pip install gpt2lab` on Linux brings mimalloc's library (cmeel-mimalloc)."""
    lib = find_mimalloc()
    assert lib is not None and "libmimalloc.so" in lib
    assert choose("mimalloc") == ("mimalloc", lib) and choose("system") is None


def test_a_caller_of_the_library_keeps_its_allocator():
    """Only the command line re-runs itself: importing gpt2lab or calling cli.main(argv) never does."""
    from gpt2lab.cli import main

    assert main(["config", "--doc"]) == 0
    assert in_use() in ("system", "tcmalloc", "mimalloc")
