"""One writer per folder (issue 31): the lock of lock.py, and prepare and train refusing a second writer in one
line before it touches anything, while the first goes on as if alone (real processes)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import one_line_error, quiet, write_wiki_jsonl
from gpt2lab import checkpoint as ckpt
from gpt2lab import layout, lock
from gpt2lab.data.prepare import WORK_DIR, prepare
from gpt2lab.lock import FolderBusy, FolderLock
from gpt2lab.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --- the lock ----------------------------------------------------------------------------------


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "new" / "run" / layout.LOCK_FILE
    with FolderLock(path, "train"):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["what"] == "train"
        with pytest.raises(FolderBusy, match=rf"is in use: gpt2lab train \(pid {os.getpid()} on "
                                             rf"{re.escape(socket.gethostname())}\) holds its lock .* one writer"):
            FolderLock(path, "prepare").acquire()
    assert not (tmp_path / "new").exists()  # the folders the lock made, empty: gone with it
    (tmp_path / "kept").mkdir()
    with FolderLock(tmp_path / "kept" / layout.LOCK_FILE, "train"):
        pass
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


def _lock_file(path: Path, host: str, pid: int, age: float) -> None:
    path.write_text(json.dumps({"what": "train", "pid": pid, "host": host, "started": time.time() - age}))
    os.utime(path, (time.time() - age, time.time() - age))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_lock_of_another_host_refuses_while_its_heartbeat_is_fresh(tmp_path):
    """A shared filesystem whose flock does not reach other hosts: the heartbeat does."""
    path = tmp_path / layout.LOCK_FILE
    _lock_file(path, "elsewhere", 4242, age=5)
    with pytest.raises(FolderBusy, match=r"gpt2lab train \(pid 4242 on elsewhere\) kept its lock alive 5 s ago"):
        FolderLock(path, "train").acquire()
    assert json.loads(path.read_text())["host"] == "elsewhere"  # the refused one wrote nothing
    _lock_file(path, "elsewhere", 4242, age=lock.STALE_S + 10)  # that host died: its heartbeat stopped
    with FolderLock(path, "train"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    path = tmp_path / layout.LOCK_FILE
    _lock_file(path, socket.gethostname(), _dead_pid(), age=0)
    with FolderLock(path, "train"):
        pass
    # a filesystem without flock: a live process of this host named in the file refuses, a dead one does not
    monkeypatch.setattr(lock, "_flock", lambda fd: False)
    _lock_file(path, socket.gethostname(), os.getppid(), age=0)
    with pytest.raises(FolderBusy, match=rf"pid {os.getppid()} on"):
        FolderLock(path, "train").acquire()
    _lock_file(path, socket.gethostname(), _dead_pid(), age=0)
    with FolderLock(path, "train"):
        pass


def test_the_holder_keeps_its_heartbeat(tmp_path):
    path = tmp_path / layout.LOCK_FILE
    with FolderLock(path, "prepare", heartbeat_s=0.05):
        os.utime(path, (0, 0))
        deadline = time.monotonic() + 10
        while os.stat(path).st_mtime < time.time() - 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.stat(path).st_mtime > time.time() - 60


def test_the_lock_ends_with_its_process_not_its_forked_children(tmp_path):
    """prepare's tokenizing workers are forked: the lock must not live on in them after a kill -9 of prepare."""
    path, pid = tmp_path / layout.LOCK_FILE, tmp_path / "child"
    script = (f"import os, time\nfrom gpt2lab.lock import FolderLock\nFolderLock({str(path)!r}, 'prepare').acquire()\n"
              "child = os.fork()\nif child == 0:\n    time.sleep(60)\n    os._exit(0)\n"
              f"open({str(pid)!r}, 'w').write(str(child))\nos._exit(0)  # as if killed: no release\n")
    subprocess.run([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                   timeout=60, check=True)
    child = int(pid.read_text())
    try:
        assert path.exists()  # left behind, as a killed process leaves it
        with FolderLock(path, "prepare"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


# --- prepare -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    return write_wiki_jsonl(tmp_path_factory.mktemp("wiki") / "wiki.jsonl", 3000)


def _files(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _prepare_cmd(wiki, out):
    return [sys.executable, "-m", "gpt2lab", "prepare", str(wiki), "--out", str(out), "--shard-tokens", "100000",
            "--workers", "1"]


def test_prepare_into_a_folder_in_use_is_refused_before_it_reads_it(wiki, tmp_path):
    out = tmp_path / "out"
    with FolderLock(out / layout.LOCK_FILE, "prepare"):
        with pytest.raises(FolderBusy, match=rf"{re.escape(str(out))} is in use: gpt2lab prepare \(pid {os.getpid()}"):
            prepare([wiki], out, workers=1, log=quiet)
        assert [p.name for p in out.iterdir()] == [layout.LOCK_FILE]


@pytest.mark.slow
def test_a_second_prepare_is_refused_and_the_first_ends_as_if_alone(wiki, tmp_path):
    """Issue 31, item 1: the second of two `prepare --out X` is refused in one line, before it touches X; the first,
    stopped while the second runs, then ends byte-identical to a lone prepare."""
    lone, out = tmp_path / "lone", tmp_path / "out"
    assert subprocess.run(_prepare_cmd(wiki, lone), capture_output=True, env=env(), timeout=300).returncode == 0
    first = subprocess.Popen(_prepare_cmd(wiki, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("train_*.bin")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # in the middle of its work, and it stays there while the second runs
        assert first.poll() is None, "the first prepare ended before the second could start"
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        second = subprocess.run(_prepare_cmd(wiki, out), capture_output=True, text=True, env=env(), timeout=120)
        line = one_line_error(second)
        assert f"is in use: gpt2lab prepare (pid {first.pid} on {socket.gethostname()})" in line
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # untouched
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert _files(out) == _files(lone) and not (out / WORK_DIR).exists() and not (out / layout.LOCK_FILE).exists()


# --- train -------------------------------------------------------------------------------------

STEPS = 8


def _train_cmd(data, run, *extra):
    return [sys.executable, "-m", "gpt2lab", "train", "model.preset=micro", "model.dropout=0.1", "train.device=cpu",
            "train.dtype=float32", "train.deterministic=true", "train.threads=1", "train.micro_batch=4",
            "train.seq_len=32", f"train.max_steps={STEPS}", "train.ckpt_every=2", "train.keep_checkpoints=0",
            "train.log_every=1", "optim.warmup_steps=2", "eval.every=-1", "eval.sample_every=-1",
            f"data.dir={data}", f"train.run_dir={run}", *extra]


def _final(run: Path) -> tuple[dict, list]:
    last = ckpt.list_checkpoints(run)[-1]
    assert last.name == layout.checkpoint_name(STEPS)
    return load_file(str(last / layout.MODEL_FILE)), [(r["step"], r["loss"]) for r in read_metrics(run, "train")]


@pytest.mark.slow
def test_a_second_train_is_refused_and_the_first_ends_as_if_alone(small_shards, tmp_path):
    """Issue 31, item 2: with run A training, `train --resume` (or a new start) on its folder is refused in one line
    naming A, before it writes anything; A, stopped meanwhile, ends bit-identical to a lone run."""
    lone, run = tmp_path / "lone", tmp_path / "run"
    alone = subprocess.Popen(_train_cmd(small_shards, lone), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env())
    first = subprocess.Popen(_train_cmd(small_shards, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env())
    try:
        deadline = time.monotonic() + 120
        while not ckpt.list_checkpoints(run) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before the second could start"
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        for extra in (["--resume"], []):
            second = subprocess.run(_train_cmd(small_shards, run, *extra), capture_output=True, text=True, env=env(),
                                    timeout=120)
            line = one_line_error(second)
            assert f"{run} is in use: gpt2lab train (pid {first.pid} on {socket.gethostname()})" in line
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0 and alone.wait(timeout=300) == 0
    (weights, losses), (ref_weights, ref_losses) = _final(run), _final(lone)
    assert losses == ref_losses and [s for s, _ in losses] == list(range(1, STEPS + 1))
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert json.loads((run / layout.STATUS_FILE).read_text())["state"] == "finished"
    assert not (run / layout.LOCK_FILE).exists()


@pytest.mark.slow
def test_two_trains_started_together_one_is_refused(small_shards, tmp_path):
    """Issue 31, item 2: both used to pass the start check and both exited 0, their records interleaved."""
    run = tmp_path / "run"
    procs = [subprocess.Popen(_train_cmd(small_shards, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env()) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    rc, out, err = next(r for r in results if r[0] == 2)
    one_line_error(subprocess.CompletedProcess([], rc, out, err))
    assert [r["step"] for r in read_metrics(run, "train")] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_a_refusal_reaches_every_rank_under_torchrun(small_shards, tmp_path):
    """Only rank 0 holds the lock; the other ranks learn of its refusal and stop with it, in one line each."""
    run = tmp_path / "run"
    with FolderLock(run / layout.LOCK_FILE, "train"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *_train_cmd(small_shards, run)[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=180)
        assert r.returncode != 0
        errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("error: ")]
        assert len(errors) == 2 and all(f"is in use: gpt2lab train (pid {os.getpid()}" in e for e in errors), r.stderr
        assert "gpt2lab/train.py" not in r.stderr  # no worker's traceback (torchrun prints its own summary)
        assert [p.name for p in run.iterdir()] == [layout.LOCK_FILE]
