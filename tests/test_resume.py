import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import ckpt_cfg, quiet
from gpt2lab import checkpoint as ckpt
from gpt2lab import layout
from gpt2lab.distributed import DistInfo
from gpt2lab.errors import UserError
from gpt2lab.metrics import read_metrics
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.train import Trainer, train

REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 12
KILL_AFTER = "step_00000004"


# the speedrun recipe (issue 14): every model switch, and Muon + AdamW in one optimizer
SPEEDRUN = ["model.bias=false", "model.rotary=true", "model.qk_norm=true", "model.norm=rmsnorm", "model.mlp=relu2",
            "model.tie_head=false", "model.zero_init_proj=true", "model.logit_softcap=30", "optim.optimizer=muon",
            "optim.embed_lr=0.01", "optim.schedule=wsd", "train.seq_len=32"]  # shorter: its steps cost more


def cli_args(data_dir, run_dir, *extra):
    return [
        "train", "model.preset=micro", "model.dropout=0.1", "train.device=cpu", "train.dtype=float32",
        "train.deterministic=true", "train.threads=1", "train.ckpt_every=2", f"train.max_steps={MAX_STEPS}",
        "train.keep_checkpoints=0", "train.micro_batch=4", "train.seq_len=64", "optim.warmup_steps=2",
        "optim.lr=1e-3", "eval.every=0", "eval.val_tokens=512", "eval.sample_every=-1",
        f"data.dir={data_dir}", f"train.run_dir={run_dir}", *extra,
    ]


def gpt2lab(args, log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", *args], stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    return proc


def final_tensors(run_dir: Path) -> dict:
    last = ckpt.list_checkpoints(run_dir)[-1]
    assert last.name == f"step_{MAX_STEPS:08d}"
    return load_file(str(last / layout.MODEL_FILE))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [[], SPEEDRUN], ids=["gpt2", "speedrun"])
def test_sigkill_then_resume_is_bitwise_identical(small_shards, tmp_path, recipe):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    # run A (uninterrupted) and run B (to be killed) side by side, one thread each
    proc_a = gpt2lab(cli_args(small_shards, run_a, *recipe), tmp_path / "a.log", tmp_path)
    proc_b = gpt2lab(cli_args(small_shards, run_b, *recipe), tmp_path / "b1.log", tmp_path)
    marker = run_b / "checkpoints" / KILL_AFTER
    deadline = time.monotonic() + 240
    while not marker.is_dir():
        assert proc_b.poll() is None, "run B ended before it could be killed:\n" + (tmp_path / "b1.log").read_text()
        assert time.monotonic() < deadline, "no checkpoint after 240 s:\n" + (tmp_path / "b1.log").read_text()
        time.sleep(0.01)
    os.kill(proc_b.pid, signal.SIGKILL)
    assert proc_b.wait(timeout=60) == -signal.SIGKILL
    killed_at = [p.name for p in ckpt.list_checkpoints(run_b)]
    assert killed_at and killed_at[-1] != f"step_{MAX_STEPS:08d}", f"B was not interrupted mid-run: {killed_at}"

    proc_b2 = gpt2lab(cli_args(small_shards, run_b, *recipe) + ["--resume"], tmp_path / "b2.log", tmp_path)
    assert proc_a.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()
    assert proc_b2.wait(timeout=300) == 0, (tmp_path / "b2.log").read_text()
    log_b2 = (tmp_path / "b2.log").read_text()
    m = re.search(r"resumed from \S+step_(\d+) \(step (\d+)\)", log_b2)
    assert m, log_b2
    resumed_step = int(m.group(2))
    assert 4 <= resumed_step < MAX_STEPS and f"step_{resumed_step:08d}" == killed_at[-1]

    a, b = final_tensors(run_a), final_tensors(run_b)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after SIGKILL + resume"
    # the runs used dropout, so equality needed the restored RNG state, not only weights/optimizer/data
    assert "dropout: 0.1" in (run_b / "config.yaml").read_text()
    if recipe:  # an untied head, and Muon's and AdamW's states in one optimizer state
        assert "lm_head.weight" in a and "transformer.wpe.weight" not in a
        state = ckpt.load_train_state(ckpt.list_checkpoints(run_b)[-1])["optimizer"]
        assert [g["kind"] for g in state["param_groups"]] == ["muon", "embed", "head", "scalar"]

    # metrics: every train step once, and the same losses as the uninterrupted run
    train_a = read_metrics(run_a, "train")
    train_b = read_metrics(run_b, "train")
    assert [r["step"] for r in train_b] == list(range(1, MAX_STEPS + 1))
    assert [r["loss"] for r in train_b] == [r["loss"] for r in train_a]
    assert [r["step"] for r in read_metrics(run_b, "val")] == [MAX_STEPS]
    assert not list((run_b / "checkpoints").glob(".tmp-*"))


SIGNAL_STEPS = 12


def _metrics_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(read_metrics(run, "train")) if path.is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_the_step_and_resume_is_bitwise_identical(small_shards, tmp_path, sig):
    """SIGTERM (Slurm, Kubernetes, spot instances) or SIGINT: the step finishes, a checkpoint of it is
    written, the process exits 128 + signal with one clear line, and resuming loses nothing."""
    args = [a for a in cli_args(small_shards, "") if not a.startswith(("train.max_steps", "train.ckpt_every",
                                                                         "train.run_dir"))]
    args += [f"train.max_steps={SIGNAL_STEPS}", "train.ckpt_every=0", "train.log_every=1"]
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    proc_a = gpt2lab([*args, f"train.run_dir={run_a}"], tmp_path / "a.log", tmp_path)
    proc_b = gpt2lab([*args, f"train.run_dir={run_b}"], tmp_path / "b1.log", tmp_path)
    deadline = time.monotonic() + 240
    while _metrics_steps(run_b) < 3:
        assert proc_b.poll() is None and time.monotonic() < deadline, (tmp_path / "b1.log").read_text()
        time.sleep(0.01)
    os.kill(proc_b.pid, sig)
    assert proc_b.wait(timeout=120) == 128 + sig, (tmp_path / "b1.log").read_text()
    log_b1 = (tmp_path / "b1.log").read_text()
    m = re.search(rf"stopped by {sig.name} after step (\d+): checkpoint \S+step_(\d+) written in [\d.]+ s; "
                  r"continue with --resume", log_b1)
    assert m and m.group(1) == str(int(m.group(2))), log_b1
    stopped_at = int(m.group(1))
    assert 3 <= stopped_at < SIGNAL_STEPS, log_b1
    assert "Traceback" not in log_b1 and f"{sig.name} received" in log_b1
    assert [p.name for p in ckpt.list_checkpoints(run_b)] == [f"step_{stopped_at:08d}"]  # no ckpt_every: the signal's

    proc_b2 = gpt2lab([*args, f"train.run_dir={run_b}", "--resume"], tmp_path / "b2.log", tmp_path)
    assert proc_a.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()
    assert proc_b2.wait(timeout=300) == 0, (tmp_path / "b2.log").read_text()
    assert f"(step {stopped_at})" in (tmp_path / "b2.log").read_text()
    a, b = (load_file(str(ckpt.list_checkpoints(r)[-1] / layout.MODEL_FILE)) for r in (run_a, run_b))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ after signal + resume"
    assert [r["loss"] for r in read_metrics(run_b, "train")] == [r["loss"] for r in read_metrics(run_a, "train")]


@pytest.mark.slow
def test_second_signal_aborts_and_keeps_the_previous_checkpoint(small_shards, tmp_path):
    args = [a for a in cli_args(small_shards, tmp_path / "run") if not a.startswith("train.max_steps")]
    args += ["train.max_steps=100000", "train.log_every=1", "train.micro_batch=16"]  # steps long enough to hit
    proc = gpt2lab(args, tmp_path / "log", tmp_path)
    deadline = time.monotonic() + 240
    while len(ckpt.list_checkpoints(tmp_path / "run")) < 2:  # checkpoints every 2 steps
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    while "SIGTERM received" not in (tmp_path / "log").read_text():  # two quick signals would arrive as one
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGTERM)  # during the step or the checkpoint the first one asked for
    rc = proc.wait(timeout=120)
    text = (tmp_path / "log").read_text()
    assert "Traceback" not in text, text
    assert rc == 128 + signal.SIGTERM and "aborted by a second SIGTERM" in text, (rc, text)
    assert "stopped by SIGTERM" not in text
    found = ckpt.list_checkpoints(tmp_path / "run")
    assert len(found) >= 2 and all(ckpt.verify_checkpoint(p) for p in found)
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    r = subprocess.run([sys.executable, "-m", "gpt2lab", *[a for a in args if not a.startswith("train.max_steps")],
                        f"train.max_steps={int(found[-1].name[5:]) + 2}", "--resume"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr


# --- in-process resume errors -------------------------------------------------------------


def short_cfg(data_dir, run_dir, *extra):
    return ckpt_cfg(data_dir, run_dir, 2, *extra)


@pytest.fixture(scope="module")
def short_run(small_shards, tmp_path_factory):
    """A finished 2-step run with one checkpoint; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("short") / "run"
    train(short_cfg(small_shards, run), log=quiet)
    return run


@pytest.fixture
def run_copy(short_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(short_run, dst)
    return dst


def test_resume_continues_in_process(small_shards, run_copy):
    lines = []
    summary = train(short_cfg(small_shards, run_copy, "train.max_steps=4"), resume=True, log=lines.append)
    assert summary["steps"] == 4
    assert any(re.search(r"resumed from .*step_00000002", line) for line in lines)
    assert [r["step"] for r in read_metrics(run_copy, "train")] == [1, 2, 3, 4]
    assert [p.name for p in ckpt.list_checkpoints(run_copy)] == ["step_00000002", "step_00000004"]


def test_resume_of_a_run_that_stopped_after_its_last_step_finishes_it(small_shards, run_copy, capsys):
    """A rank killed after the last checkpoint (during the final evaluation) leaves every step done and status.json
    "stopped"; torchrun's restart with --resume said "nothing to do" and left it stopped (tools/fault_trial.py,
    elastic). It now finishes the run, changing nothing else; a finished run still has nothing to do."""
    from gpt2lab.cli import main
    from gpt2lab.runinfo import read_status

    status = run_copy / layout.STATUS_FILE
    checkpoints, records = ckpt.list_checkpoints(run_copy), read_metrics(run_copy)
    def weights():
        return load_file(str(ckpt.list_checkpoints(run_copy)[-1] / layout.MODEL_FILE))

    before = weights()
    note = {**read_status(status), "state": "stopped", "message": "Connection closed by peer"}
    status.write_text(json.dumps(note))
    args = ["train", "--resume", str(run_copy), f"data.dir={small_shards}"]
    assert main(args) == 0
    assert "has already done 2 steps" in capsys.readouterr().out
    assert read_status(status)["state"] == "finished"
    assert ckpt.list_checkpoints(run_copy) == checkpoints and read_metrics(run_copy, "train") == [
        r for r in records if r["kind"] == "train"]
    assert all(torch.equal(t, before[k]) for k, t in weights().items())
    assert main(args) == 0  # finished: said at once, before a model is built
    out = capsys.readouterr().out
    assert "nothing to do" in out and "model " not in out, out


@pytest.mark.parametrize("recipe", [[], ["optim.optimizer=muon"]], ids=["adamw", "muon"])
def test_resume_trains_with_the_configs_optimizer_settings(small_shards, tmp_path, recipe):
    """The checkpoint gives the optimizer its moments and steps, not its settings: betas, eps, weight
    decay, fused and Muon's momentum changed on resume take effect, as the run's config.yaml says."""
    base = tmp_path / "base"
    train(short_cfg(small_shards, base, *recipe), log=quiet)
    changed = ["optim.weight_decay=0.5", "optim.beta2=0.9", "optim.eps=1e-4", "optim.fused=false",
               "optim.muon_momentum=0.8"]
    weights = {}
    for name, extra in (("same", []), ("changed", changed)):
        run = tmp_path / name
        shutil.copytree(base, run)
        trainer = Trainer(short_cfg(small_shards, run, "train.max_steps=4", *recipe, *extra), DistInfo(), log=quiet)
        trainer.start(resume=True)
        groups = trainer.optimizer.param_groups
        if name == "changed":
            assert all(g["betas"] == (0.9, 0.9) and g["eps"] == 1e-4 and not g["fused"] for g in groups)
            assert max(g["weight_decay"] for g in groups) == 0.5
            assert all(g["momentum"] == 0.8 for g in groups if g.get("kind") == "muon")
        assert trainer.run()["steps"] == 4
        weights[name] = load_file(str(run / "checkpoints" / "step_00000004" / layout.MODEL_FILE))
    assert any(not torch.equal(weights["same"][k], weights["changed"][k]) for k in weights["same"])


def test_resume_after_a_torn_metrics_line_keeps_every_record(small_shards, run_copy):
    """A crash (or a full disk) half way through writing a record leaves a line without its end; the
    resumed run's first record was glued onto it and lost."""
    with open(run_copy / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "step": 3, "lo')
    train(short_cfg(small_shards, run_copy, "train.max_steps=4"), resume=True, log=quiet)
    assert [r["step"] for r in read_metrics(run_copy, "train")] == [1, 2, 3, 4]
    assert (run_copy / "metrics.jsonl").read_bytes().count(b'"lo\n') == 0


def test_resume_without_checkpoint_starts_from_step_0(small_shards, tmp_path):
    """torchrun --max-restarts repeats the first command line, --resume included: a run that died before its
    first checkpoint starts again from step 0, and says so (issue 31). Only damaged checkpoints set aside: refused."""
    lines = []
    summary = train(short_cfg(small_shards, tmp_path / "empty"), resume=True, log=lines.append)
    assert summary["steps"] == 2
    assert any(re.search(r"--resume: no checkpoint in \S+ yet: starting from step 0", line) for line in lines)
    run = tmp_path / "damaged"
    (run / layout.CHECKPOINTS_DIR / f"{layout.DAMAGED_PREFIX}step_00000002").mkdir(parents=True)
    with pytest.raises(UserError, match="no intact checkpoint .*damaged-step_00000002"):
        train(short_cfg(small_shards, run), resume=True, log=quiet)


def test_resume_ignores_half_written_checkpoint(small_shards, run_copy):
    stale = run_copy / "checkpoints" / ".tmp-step_00000003"
    stale.mkdir()
    (stale / layout.MODEL_FILE).write_bytes(b"half a file")
    lines = []
    train(short_cfg(small_shards, run_copy, "train.max_steps=4"), resume=True, log=lines.append)
    assert any("step_00000002" in line and "resumed" in line for line in lines)
    assert not stale.exists()  # cleaned up by the next save


@pytest.mark.parametrize("override", ["model.n_layer=3", "model.n_embd=128", "model.block_size=64"])
def test_resume_with_different_model_is_user_error(small_shards, run_copy, override):
    with pytest.raises(UserError, match="different model"):
        train(short_cfg(small_shards, run_copy, "train.max_steps=4", override), resume=True, log=quiet)


def test_weights_of_another_shape_are_user_error(run_copy):
    path = ckpt.list_checkpoints(run_copy)[-1] / layout.MODEL_FILE
    other = GPT(GPTConfig(block_size=128, n_layer=2, n_head=2, n_embd=32))
    with pytest.raises(UserError) as e:
        ckpt.load_model_weights(other, path)
    assert str(path) in str(e.value)
    deeper = GPT(GPTConfig(block_size=128, n_layer=3, n_head=2, n_embd=64))
    with pytest.raises(UserError, match="missing"):
        ckpt.load_model_weights(deeper, path)


def _truncate_half(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _truncate_header(p: Path):
    p.write_bytes(p.read_bytes()[:5])


def _garbage(p: Path):
    p.write_bytes(os.urandom(4096))


def _empty(p: Path):
    p.write_bytes(b"")


def _drop_tail(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[:-100])


@pytest.mark.parametrize("damage", [_truncate_half, _truncate_header, _garbage, _empty, _drop_tail])
def test_corrupt_model_file_is_user_error(small_shards, run_copy, damage):
    folder = ckpt.list_checkpoints(run_copy)[-1]
    path = folder / layout.MODEL_FILE
    damage(path)
    with pytest.raises(UserError) as e:  # sample, eval: refused, naming the file
        ckpt.load_model(run_copy)
    assert str(path) in str(e.value)
    with pytest.raises(UserError) as e:  # resume: no intact checkpoint is left
        train(short_cfg(small_shards, run_copy, "train.max_steps=4"), resume=True, log=quiet)
    assert str(path) in str(e.value) and "no intact checkpoint" in str(e.value)
    assert not folder.exists() and (folder.parent / f"damaged-{folder.name}").is_dir()  # set aside, kept


def _sign_again(folder: Path):
    """Checksums made anew after a change: what a crafted file (or one from a tool that rewrote it) looks like."""
    ckpt.write_checksums(folder)


def test_corrupt_train_state_is_user_error(small_shards, run_copy):
    folder = ckpt.list_checkpoints(run_copy)[-1]
    _truncate_half(folder / layout.STATE_FILE)
    _sign_again(folder)  # the checksums match: the reader itself must refuse it
    with pytest.raises(UserError) as e:
        train(short_cfg(small_shards, run_copy, "train.max_steps=4"), resume=True, log=quiet)
    assert str(folder / layout.STATE_FILE) in str(e.value)


def test_unreadable_train_state_says_why_without_calling_it_damaged(small_shards, run_copy):
    folder = ckpt.list_checkpoints(run_copy)[-1]
    path = folder / layout.STATE_FILE
    path.unlink()
    path.mkdir()  # readable as nothing: an I/O error, not damage
    _sign_again(folder)
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: cannot read the training state \(Is a directory\)$"):
        train(short_cfg(small_shards, run_copy, "train.max_steps=4"), resume=True, log=quiet)


def test_train_state_without_rng_is_user_error(small_shards, run_copy):
    folder = ckpt.list_checkpoints(run_copy)[-1]
    path = folder / layout.STATE_FILE
    state = torch.load(path, weights_only=True)
    del state["rng"]
    torch.save(state, path)
    _sign_again(folder)
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: lacks rng"):
        train(short_cfg(small_shards, run_copy, "train.max_steps=4"), resume=True, log=quiet)


def test_unknown_key_in_checkpoint_config_names_the_file(run_copy):
    path = ckpt.list_checkpoints(run_copy)[-1] / layout.CONFIG_FILE
    path.write_text(path.read_text().replace("model:\n", "model:\n  foo: 1\n", 1))
    _sign_again(path.parent)
    with pytest.raises(UserError, match=rf"'model.foo'.* in {re.escape(str(path))}"):
        ckpt.load_model(run_copy)


def test_fresh_start_after_a_run_without_checkpoints_drops_its_history(small_shards, run_copy):
    shutil.rmtree(run_copy / "checkpoints")  # as if it had stopped before its first checkpoint
    (run_copy / "evals").mkdir(exist_ok=True)
    (run_copy / "evals" / "step_00000009.json").write_text("{}")  # from that run, past where this one starts
    train(short_cfg(small_shards, run_copy), log=quiet)
    assert [r["step"] for r in read_metrics(run_copy, "train")] == [1, 2]  # once each, not twice
    assert not (run_copy / "evals" / "step_00000009.json").exists()


def test_missing_checkpoint_config_is_user_error(run_copy):
    last = ckpt.list_checkpoints(run_copy)[-1]
    (last / layout.CONFIG_FILE).unlink()
    with pytest.raises(UserError, match="config.yaml"):
        ckpt.load_model(run_copy)


def test_load_model_from_run_or_checkpoint_folder(run_copy, tmp_path):
    m1, c1 = ckpt.load_model(run_copy)
    m2, c2 = ckpt.load_model(ckpt.list_checkpoints(run_copy)[-1])
    assert c1 == c2
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert m1.lm_head.weight is m1.transformer.wte.weight  # still tied after loading
    with pytest.raises(UserError, match="no such"):
        ckpt.load_model(tmp_path / "nothing-here")
