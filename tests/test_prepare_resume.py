"""An interrupted prepare (exception, SIGKILL, full disk) continues and ends byte-identical to an uninterrupted one."""

import json
import resource
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import quiet, write_wiki_jsonl
from gpt2lab.data.prepare import WORK_DIR, prepare
from gpt2lab.data.shards import read_shard
from gpt2lab.errors import UserError


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    """About 1.8M tokens of Wikipedia-shaped articles as .jsonl."""
    return write_wiki_jsonl(tmp_path_factory.mktemp("wiki") / "wiki.jsonl", 5000)


OPTS = dict(val_fraction=0.1, shard_tokens=100_000)  # what the subprocess tests run (_prepare_cmd)
OPTS_FIRST = dict(val_tokens=150_000, shard_tokens=100_000)  # shards are finished chunk by chunk: many states saved


@pytest.fixture(scope="module")
def reference(wiki, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    prepare([wiki], out, workers=2, log=quiet, **OPTS)
    return out


@pytest.fixture(scope="module")
def reference_first(wiki, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref_first") / "out"
    prepare([wiki], out, workers=2, log=quiet, **OPTS_FIRST)
    return out


def files_of(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


class Interrupt(Exception):
    pass


def stop_after(n_shards):
    seen = []

    def log(msg):
        if msg.startswith("wrote "):
            seen.append(msg)
            if len(seen) == n_shards:
                raise Interrupt(msg)
    return log


@pytest.mark.parametrize("stops", [[1], [3, 2], [9], [12]])
def test_interrupted_then_continued_is_identical(wiki, reference_first, tmp_path, stops):
    out = tmp_path / "out"
    for i, n in enumerate(stops):
        with pytest.raises(Interrupt):
            prepare([wiki], out, workers=1 + i % 2, log=stop_after(n), **OPTS_FIRST)
        assert not (out / "manifest.json").exists() and (out / WORK_DIR / "state.json").exists()
    state = json.loads((out / WORK_DIR / "state.json").read_text())
    saved = sum(len(w["shards"]) for w in state["writers"].values())
    assert saved > 0 or stops == [1]  # the first shard is interrupted before the state can record it
    msgs = []
    m = prepare([wiki], out, workers=2, log=msgs.append, **OPTS_FIRST)
    assert any(msg.startswith("continuing an interrupted prepare") for msg in msgs)
    assert sum(msg.startswith("wrote ") for msg in msgs) == len(m["shards"]) - saved  # only what was not saved
    assert files_of(out) == files_of(reference_first)
    assert not (out / WORK_DIR).exists()


def test_interrupted_prepare_with_other_options_is_refused(wiki, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        prepare([wiki], out, workers=1, log=stop_after(2), **OPTS)
    with pytest.raises(UserError, match=r"interrupted prepare whose options differ from this command.s .* --overwrite"):
        prepare([wiki], out, workers=1, log=quiet, val_fraction=0.2, shard_tokens=100_000)
    m = prepare([wiki], out, workers=1, log=quiet, overwrite=True, val_fraction=0.2, shard_tokens=100_000)
    assert m["options"]["val_fraction"] == 0.2


def _prepare_cmd(wiki, out, val=("--val-fraction", "0.1"), shard_tokens=100_000):
    return [sys.executable, "-m", "gpt2lab", "prepare", str(wiki), "--out", str(out), *val,
            "--shard-tokens", str(shard_tokens), "--workers", "1"]


@pytest.mark.slow
def test_sigkill_then_rerun_is_identical(wiki, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_prepare_cmd(wiki, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = out / WORK_DIR / "state.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and len(list(out.glob("train_*.bin"))) >= 4:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    assert not (out / "manifest.json").exists()
    for p in out.glob("*.bin"):  # whatever shard is there is complete
        read_shard(p)
    done = subprocess.run(_prepare_cmd(wiki, out), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "continuing an interrupted prepare" in done.stdout
    assert files_of(out) == files_of(reference)


@pytest.mark.slow
def test_full_disk_gives_one_line_and_no_partial_shard(wiki, tmp_path):
    out = tmp_path / "out"
    cmd = _prepare_cmd(wiki, out, val=("--val-tokens", "50000"), shard_tokens=300_000)

    def small_disk():  # no file may grow past 400 KB: the val shard (100 KB) fits, the first train shard (600 KB) not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=small_disk)
    assert failed.returncode == 2
    err = failed.stderr.strip().splitlines()
    assert (len(err) == 1 and err[0].startswith("error: no space left while writing")
            and "Traceback" not in failed.stderr)
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in out.glob("*.bin")) == ["val_000000.bin"] and not list(out.glob(".tmp-*"))
    assert len(read_shard(out / "val_000000.bin")) == 50_000
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "continuing an interrupted prepare" in done.stdout
    prepare([wiki], tmp_path / "ref", workers=2, log=quiet, val_tokens=50_000, shard_tokens=300_000)
    assert files_of(out) == files_of(tmp_path / "ref")


def test_state_file_keeps_its_format(wiki, tmp_path):
    """state.json is what earlier versions wrote and read, so that a prepare interrupted by one continues with
    another: these keys in this order, the document counts as [kept, empty, invalid_utf8]."""
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        prepare([wiki], out, workers=1, log=stop_after(3), **OPTS_FIRST)
    state = json.loads((out / WORK_DIR / "state.json").read_text())
    assert list(state) == ["version", "identity", "position", "docs_read", "counts", "router_position", "pending",
                           "writers"]
    assert state["version"] == 1 and sorted(state["identity"]) == ["inputs", "options", "source", "tokenizer",
                                                                    "vocab_sha256"]
    kept, empty, invalid = state["counts"]
    assert 0 < kept <= state["docs_read"] and empty >= 0 and invalid >= 0
    assert all(list(w) == ["index", "count", "shards"] for w in state["writers"].values())
    assert state["router_position"] > 0 and len(state["position"]) == 2


@pytest.mark.parametrize("damage", ["a list", "identity not a dict", "no writers"])
def test_damaged_state_file_is_one_line(wiki, tmp_path, damage):
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        prepare([wiki], out, workers=1, log=stop_after(2), **OPTS_FIRST)
    path = out / WORK_DIR / "state.json"
    state = json.loads(path.read_text())
    if damage == "a list":
        state = [state]
    elif damage == "identity not a dict":
        state["identity"] = 3
    else:
        del state["writers"]
    path.write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"state.json: not the state gpt2lab writes; pass --overwrite to start over"):
        prepare([wiki], out, workers=1, log=quiet, **OPTS_FIRST)
