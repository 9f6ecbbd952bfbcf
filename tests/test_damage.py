"""Nothing lost, nothing silently wrong: damaged checkpoints, shards and files, crafted training
states, full disks and bad input all end in one clear line (or are skipped with a warning), and
nothing half-written is left. Preemption (SIGTERM/SIGINT) is in test_resume.py and
test_distributed.py."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_helpers import ckpt_cfg, micro_cfg, quiet
from gpt2lab import checkpoint as ckpt
from gpt2lab import layout
from gpt2lab.cli import main
from gpt2lab.errors import UserError
from gpt2lab.train import train


def short_cfg(data_dir, run_dir, *extra):
    return ckpt_cfg(data_dir, run_dir, 4, *extra)


@pytest.fixture(scope="module")
def done_run(small_shards, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4; tests copy it before changing it."""
    run = tmp_path_factory.mktemp("damage") / "run"
    train(short_cfg(small_shards, run), log=quiet)
    return run


@pytest.fixture
def run(done_run, tmp_path):
    return Path(shutil.copytree(done_run, tmp_path / "run"))


def flip_byte(path: Path, at: float = 0.5):
    """Flip one bit in the middle of a file: the size and the format stay, the content changes."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def cli(capsys, *args) -> tuple[int, str, str]:
    """The gpt2lab command, in this process: (exit code, stdout, stderr). A traceback fails the test."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    return lines[0]


# --- checksums ------------------------------------------------------------------------------


def test_every_checkpoint_file_has_a_checksum(run):
    for folder in ckpt.list_checkpoints(run):
        sums = json.loads((folder / layout.CHECKSUMS_FILE).read_text())["sha256"]
        assert sorted(sums) == sorted([layout.MODEL_FILE, layout.CONFIG_FILE, layout.STATE_FILE])
        assert ckpt.verify_checkpoint(folder) is True


@pytest.mark.parametrize("name", [layout.MODEL_FILE, layout.STATE_FILE, layout.CONFIG_FILE, layout.CHECKSUMS_FILE])
def test_a_flipped_byte_in_any_file_is_found(run, name):
    folder = ckpt.list_checkpoints(run)[-1]
    flip_byte(folder / name)
    with pytest.raises(ckpt.DamagedCheckpoint) as e:
        ckpt.verify_checkpoint(folder)
    assert str(folder) in str(e.value)


def test_sample_and_eval_refuse_flipped_weights(run, small_shards, capsys):
    path = ckpt.list_checkpoints(run)[-1] / layout.MODEL_FILE
    flip_byte(path)  # safetensors still parses it: only the checksum tells
    assert load_file(str(path))  # readable: without checksums the altered weights would be used
    for args in (["sample", run, "--max-new-tokens", "2", "--device", "cpu"],
                 ["eval", "loss", run, "--data", small_shards, "--device", "cpu"]):
        line = one_line(*cli(capsys, *args)[::2])
        assert f"{path} differs from its sha256" in line


@pytest.mark.parametrize("patched", ["verify_checkpoint", "load_checkpoint_config"])
def test_a_reader_takes_the_newest_when_retention_removes_the_one_it_reads(run, monkeypatch, patched):
    """Issue 31, item 8: `sample`/`eval` beside a run that keeps one checkpoint failed when the run saved a new
    one and removed the one being read ("config.yaml is missing; the checkpoint is incomplete")."""
    later, cfg = ckpt.load_model(run)
    with torch.no_grad():
        later.transformer.wte.weight.add_(1.0)
    real, read = getattr(ckpt, patched), []

    def racing(folder, **kw):  # the training run saves step 6 and drops the rest just as the reader opens step 4
        if not read:
            ckpt.save_checkpoint(run, 6, later, cfg, {}, keep=1)
        read.append(Path(folder).name)
        return real(folder, **kw)

    monkeypatch.setattr(ckpt, patched, racing)
    if patched == "verify_checkpoint":
        model, _ = ckpt.load_model(run)
        assert torch.equal(model.transformer.wte.weight, later.transformer.wte.weight)
    else:
        assert ckpt.checkpoint_tokenizer(run).spec == "gpt2"
    assert read == ["step_00000004", "step_00000006"]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000006"]


def test_a_reader_that_never_catches_up_says_so(run, monkeypatch, capsys):
    """A run that removes every checkpoint before the read of it ends (it saves faster than a read takes): the
    reader chases for CHASE_S seconds, then one line that says why, not a "damaged" checkpoint."""
    model, cfg = ckpt.load_model(run)
    real, read = ckpt.verify_checkpoint, []

    def always_late(folder, **kw):
        read.append(Path(folder).name)
        ckpt.save_checkpoint(run, 4 + 2 * len(read), model, cfg, {}, keep=1)
        return real(folder, **kw)

    monkeypatch.setattr(ckpt, "verify_checkpoint", always_late)
    monkeypatch.setattr(ckpt, "CHASE_S", 0.3)
    line = one_line(*cli(capsys, "sample", run, "--max-new-tokens", "2", "--device", "cpu")[::2])
    assert "faster than it could be read" in line and "keep_checkpoints" in line, line
    assert len(read) >= 2 and read[:2] == ["step_00000004", "step_00000006"], read


@pytest.mark.slow
def test_readers_beside_a_run_that_keeps_one_checkpoint(small_shards, tmp_path):
    """The race itself: a real training process saving every step and keeping one checkpoint (killed after the
    reads), and readers that load its newest over and over meanwhile; every read succeeds."""
    run = tmp_path / "run"
    args = [f"{a}" for a in ["train", "model.preset=micro", "train.device=cpu", "train.threads=1",
                             "train.micro_batch=2", "train.seq_len=32", "train.max_steps=100000", "train.ckpt_every=1",
                             "train.keep_checkpoints=1", "eval.every=-1", "eval.sample_every=-1",
                             f"data.dir={small_shards}", f"train.run_dir={run}"]]
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    reads, errors = 0, []
    try:
        deadline = time.monotonic() + 120
        while not ckpt.list_checkpoints(run) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        while proc.poll() is None and reads < 20:
            try:
                ckpt.load_model(run)
                ckpt.checkpoint_tokenizer(run)
            except UserError as e:
                errors.append(str(e))
            reads += 1
    finally:
        proc.kill()
        proc.wait()
    assert reads >= 10 and not errors, (reads, errors)


@pytest.mark.parametrize("damaged, init_from", [(layout.STATE_FILE, False), ("config.yaml", True)],
                         ids=["state", "config-with-init_from"])
def test_resume_skips_a_damaged_newest_checkpoint(run, small_shards, done_run, damaged, init_from):
    """With train.init_from too, whose resume reads the newest checkpoint's config.yaml for the model's shape."""
    newest = ckpt.list_checkpoints(run)[-1]
    assert newest.name == "step_00000004"
    flip_byte(newest / damaged)  # altered optimizer state or config: silently used before
    lines = []
    extra = [f"train.init_from={done_run}"] if init_from else []
    summary = train(short_cfg(small_shards, run, "train.max_steps=6", "train.keep_checkpoints=1", *extra), resume=True,
                    log=lines.append)
    warning = [line for line in lines if line.startswith("warning: skipped a damaged checkpoint")]
    assert len(warning) == 1 and str(newest / damaged) in warning[0], lines
    assert any("resumed from" in line and "step_00000002 (step 2)" in line for line in lines), lines
    assert summary["steps"] == 6
    # the damaged folder is kept aside for a look; retention kept only the newest, which is intact
    assert (run / "checkpoints" / "damaged-step_00000004").is_dir()
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000006"]
    assert ckpt.verify_checkpoint(ckpt.list_checkpoints(run)[-1])


def unverify(folder: Path, how: str) -> None:
    """Make a checkpoint's checksums.json incomplete, as an older gpt2lab or someone covering an edit would."""
    path = folder / layout.CHECKSUMS_FILE
    sums = json.loads(path.read_text())["sha256"]
    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        path.write_text(json.dumps({"sha256": {}}))
    elif how == "a file unlisted":
        del sums[layout.MODEL_FILE]
        path.write_text(json.dumps({"sha256": sums}))
    else:  # a file added beside the listed ones
        (folder / "extra.bin").write_bytes(b"x")


HOW = ["deleted", "emptied", "a file unlisted", "a file added"]


@pytest.mark.parametrize("how", HOW)
def test_a_checkpoint_without_complete_checksums_is_refused(run, small_shards, capsys, how):
    """Bits flipped in the weights and the checksums made useless: sample, eval and --resume refuse it in one
    line naming the command that writes checksums (the trial's fault: they all ran it before)."""
    folder = ckpt.list_checkpoints(run)[-1]
    if how != "a file added":
        flip_byte(folder / layout.MODEL_FILE)
    unverify(folder, how)
    with pytest.raises(ckpt.UnverifiedCheckpoint, match=f"{folder}: .*`gpt2lab checkpoint checksums {folder}`"):
        ckpt.verify_checkpoint(folder)
    for args in (["sample", run, "--max-new-tokens", "2", "--device", "cpu"],
                 ["eval", "loss", run, "--data", small_shards, "--device", "cpu"]):
        line = one_line(*cli(capsys, *args)[::2])
        assert str(folder) in line and "gpt2lab checkpoint checksums" in line
    with pytest.raises(ckpt.UnverifiedCheckpoint, match="^--resume: .*gpt2lab checkpoint checksums"):
        train(short_cfg(small_shards, run, "train.max_steps=6"), resume=True, log=quiet)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002", "step_00000004"]  # nothing set aside
    assert ckpt.verify_checkpoint(folder, unverified=True) is False  # named as unverified: used as it is
    model, _ = ckpt.load_model(folder, unverified=True)
    assert model.num_params() > 0


def test_checksums_command_gives_older_checkpoints_their_checksums(run, tmp_path):
    """add_checksums (gpt2lab checkpoint checksums): every checkpoint of a run, or one; never over damage."""
    for folder in ckpt.list_checkpoints(run):
        (folder / layout.CHECKSUMS_FILE).unlink()
    done = ckpt.add_checksums(run)
    assert done == [(p, "written") for p in ckpt.list_checkpoints(run)]
    assert all(ckpt.verify_checkpoint(p) for p in ckpt.list_checkpoints(run))
    assert [what for _, what in ckpt.add_checksums(run)] == ["already complete"] * 2
    folder = ckpt.list_checkpoints(run)[-1]
    unverify(folder, "a file unlisted")
    flip_byte(folder / layout.STATE_FILE)  # listed, and changed: damage that no command blesses
    before = (folder / layout.CHECKSUMS_FILE).read_bytes()
    with pytest.raises(ckpt.DamagedCheckpoint, match="train_state.pt differs"):
        ckpt.add_checksums(folder)
    assert (folder / layout.CHECKSUMS_FILE).read_bytes() == before
    with pytest.raises(UserError, match="not a checkpoint folder"):
        ckpt.add_checksums(tmp_path)


def test_the_checksums_command_and_unverified_from_the_command_line(run, small_shards, capsys, monkeypatch):
    """`gpt2lab checkpoint checksums` is what the refusal names; --unverified uses a checkpoint as it is."""
    monkeypatch.setattr(ckpt, "_accept_unverified", False)  # whatever a command in this process sets, for the others
    for folder in ckpt.list_checkpoints(run):
        (folder / layout.CHECKSUMS_FILE).unlink()
    newest = ckpt.list_checkpoints(run)[-1]
    line = one_line(*cli(capsys, "sample", run, "--max-new-tokens", "2", "--device", "cpu")[::2])
    assert f"`gpt2lab checkpoint checksums {newest}`" in line and "--unverified" in line
    for args in (["sample", run, "--max-new-tokens", "2", "--device", "cpu", "--unverified"],
                 ["eval", "loss", run, "--data", small_shards, "--device", "cpu", "--tokens", "256", "--unverified"]):
        rc, out, err = cli(capsys, *args)
        assert rc == 0 and out, err
    line = one_line(*cli(capsys, "sample", run, "--max-new-tokens", "2", "--device", "cpu")[::2])  # not --unverified
    assert "gpt2lab checkpoint checksums" in line
    rc, out, err = cli(capsys, "checkpoint", "checksums", run)
    assert rc == 0 and out.splitlines() == [f"{p}: checksums written" for p in ckpt.list_checkpoints(run)], err
    rc, out, err = cli(capsys, "sample", run, "--max-new-tokens", "2", "--device", "cpu")
    assert rc == 0, err
    assert "already complete" in cli(capsys, "checkpoint", "checksums", newest)[1]
    assert "not a checkpoint folder" in one_line(*cli(capsys, "checkpoint", "checksums", small_shards)[::2])


# --- crafted training states and weights (their checksums made anew, as a tool would) ----------------


def rewrite_state(folder: Path, change):
    state = torch.load(folder / layout.STATE_FILE, weights_only=True)
    change(state)
    torch.save(state, folder / layout.STATE_FILE)
    ckpt.write_checksums(folder)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(step=-7), "step -7 is not a count of steps"),
    (lambda s: s.update(step=3), "step 3 differs from the folder's step 4"),
    (lambda s: s.update(step="4"), "step '4' is not a count of steps"),
    (lambda s: s.update(rng=[{"torch": torch.zeros(3)}]), "RNG states"),
    (lambda s: s.update(world_size=0), "world_size 0 is not valid"),
    (lambda s: s["optimizer"]["param_groups"].pop(), "has 1 parameter group(s), this run's optimizer 2"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr=float("nan")), "group 0 has lr nan"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2, 2)), "exp_avg of parameter 0 has shape (2, 2)"),
    (lambda s: s["optimizer"]["state"][1]["exp_avg_sq"].fill_(float("inf")),
     "exp_avg_sq of parameter 1 holds NaN or Inf"),
])
def test_crafted_training_state_is_refused_in_one_line(run, small_shards, change, message):
    folder = ckpt.list_checkpoints(run)[-1]
    rewrite_state(folder, change)
    with pytest.raises(UserError) as e:
        train(short_cfg(small_shards, run, "train.max_steps=6"), resume=True, log=quiet)
    assert message in str(e.value) and str(folder / layout.STATE_FILE) in str(e.value)
    assert "\n" not in str(e.value)
    assert not list((run / "checkpoints").glob("step_-*"))  # nothing trained on it


def test_non_finite_weights_are_an_error_at_load(run, small_shards, capsys):
    folder = ckpt.list_checkpoints(run)[-1]
    tensors = load_file(str(folder / layout.MODEL_FILE))
    tensors["transformer.h.0.attn.c_attn.weight"][0, 0] = float("nan")
    save_file(tensors, str(folder / layout.MODEL_FILE), metadata={"format": "gpt2lab"})
    ckpt.write_checksums(folder)
    with pytest.raises(UserError, match=rf"{folder}.*NaN or Inf values \(transformer.h.0.attn.c_attn.weight\)"):
        ckpt.load_model(run)
    with pytest.raises(UserError, match=rf"{folder}.*NaN or Inf"):
        train(short_cfg(small_shards, run, "train.max_steps=6"), resume=True, log=quiet)
    for args in (["sample", run, "--max-new-tokens", "2", "--device", "cpu"],
                 ["eval", "loss", run, "--data", small_shards, "--device", "cpu"]):
        assert "NaN or Inf" in one_line(*cli(capsys, *args)[::2])


# --- validation shards ----------------------------------------------------------------------


def test_a_flipped_validation_shard_is_an_error(small_shards, run, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_shards, data)
    val = next(data.glob("val_*.bin"))
    flip_byte(val, 0.9)  # a token id changes; the header and size do not
    with pytest.raises(UserError, match=rf"{val}: sha256 differs"):
        train(micro_cfg(data, tmp_path / "new", "eval.every=2"), log=quiet)
    line = one_line(*cli(capsys, "eval", "loss", run, "--data", data, "--device", "cpu")[::2])
    assert f"{val}: sha256 differs" in line
    # data.verify=false is the way round it, for those who want it
    summary = train(micro_cfg(data, tmp_path / "new2", "eval.every=2", "data.verify=false", "train.max_steps=2"),
                    log=quiet)
    assert summary["steps"] == 2


def test_a_shard_missing_from_a_prepared_folder_is_an_error(small_shards, tmp_path, capsys):
    """A shard the manifest lists but the folder lacks (a partial copy, a stray delete) stops training
    and evaluation, naming it: the rest would train on less data, or give another loss, silently."""
    for split in ("train", "val"):
        data = tmp_path / split
        shutil.copytree(small_shards, data)
        gone = sorted(data.glob(f"{split}_*.bin"))
        for p in gone:  # every shard of the split: validation would otherwise be skipped with a warning
            p.unlink()
        with pytest.raises(UserError, match=rf"{gone[0]}: listed in .*manifest.json but missing"):
            train(micro_cfg(data, tmp_path / f"run-{split}", "eval.every=2"), log=quiet)
    rc, _, err = cli(capsys, "train", "model.preset=micro", f"data.dir={tmp_path / 'val'}",
                     f"train.run_dir={tmp_path / 'r'}")
    assert rc != 0 and "val_000000.bin: listed in" in one_line(rc, err)


def test_a_run_dir_that_is_a_file_is_an_error_before_training(small_shards, tmp_path, capsys):
    """Found at the start, in one line: not as a traceback, nor (a file named checkpoints) after all
    the steps, at the first save."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "run" / "checkpoints").parent.mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    for run_dir, culprit in ((tmp_path / "file", tmp_path / "file"),
                             (tmp_path / "run", tmp_path / "run" / "checkpoints")):
        rc, out, err = cli(capsys, "train", "model.preset=micro", "train.seq_len=32", "train.max_steps=2",
                           "eval.every=-1", "eval.sample_every=-1", f"data.dir={small_shards}",
                           f"train.run_dir={run_dir}")
        assert f"{culprit} is a file, not a folder" in one_line(rc, err)
        assert "step" not in out


def test_an_output_path_through_a_file_is_an_error_before_the_work(run, small_data, tmp_path, capsys):
    """eval (after scoring everything) and convert ended in a traceback when --out named a file or a path under one."""
    (tmp_path / "results.json").write_text("{}")
    for args in (["eval", "hellaswag", run, "--data", small_data / "hellaswag_val_120.jsonl", "--limit", "2",
                  "--out", tmp_path / "results.json"],
                 ["eval", "lambada", run, "--variant", "original", "--data",
                  small_data / "lambada_test_plain_text_head.txt", "--limit", "2",
                  "--out", tmp_path / "results.json" / "x"],
                 ["convert", "to-hf", run, tmp_path / "results.json" / "hf"]):
        rc, out, err = cli(capsys, *args, "--device", "cpu") if args[0] == "eval" else cli(capsys, *args)
        assert f"{tmp_path / 'results.json'} is a file, not a folder" in one_line(rc, err)


# --- full disk ------------------------------------------------------------------------------


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_fs(tmp_path):
    """A real 56 MiB tmpfs: room for one micro checkpoint (~40 MiB), not for two."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=56m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.skipif(not _can_mount(), reason="mounting a size-limited tmpfs needs root and mount(8)")
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(small_shards, small_fs):
    run = small_fs / "run"
    cfg = short_cfg(small_shards, run, "train.keep_checkpoints=0")
    with pytest.raises(UserError) as e:
        train(cfg, log=quiet)
    msg = str(e.value)
    print(msg)
    assert "cannot write checkpoint" in msg and "step_00000004" in msg and "the disk is full" in msg, msg
    assert "needs about" in msg and "MiB" in msg and "\n" not in msg
    names = [p.name for p in (run / "checkpoints").iterdir()]
    assert names == ["step_00000002"], names  # no partial .tmp-step_00000004 left to keep the disk full
    assert ckpt.verify_checkpoint(run / "checkpoints" / "step_00000002")
    # with space again, --resume continues from the intact checkpoint
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_fs)], check=True)
    summary = train(cfg, resume=True, log=quiet)
    assert summary["steps"] == 4 and ckpt.verify_checkpoint(ckpt.list_checkpoints(run)[-1])


# --- bad input files: one line, no traceback -------------------------------------------------


def test_non_utf8_config_files(tmp_path, run, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  max_steps: 3\n  run_dir: \xff\xfe\n")
    assert f"config file {bad} is not UTF-8" in one_line(*cli(capsys, "train", "--config", bad)[::2])
    folder = ckpt.list_checkpoints(run)[-1]
    (folder / layout.CONFIG_FILE).write_bytes(b"model:\n  n_layer: \xff\n")
    ckpt.write_checksums(folder)
    line = one_line(*cli(capsys, "sample", folder, "--device", "cpu")[::2])
    assert f"{folder / layout.CONFIG_FILE} is not UTF-8" in line


def test_yaml_tag_in_an_override_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    rc, _, err = cli(capsys, "train", f"train.seed=!!python/object/apply:os.system ['touch {marker}']")
    assert "bad override" in one_line(rc, err) and not marker.exists()


@pytest.mark.parametrize("shards, message", [
    ([1, 2], "shard entry 0 is not an object"),
    ([{"name": "train_000000.bin", "sha256": "0"}], "shard train_000000.bin has no token count"),
    ([{"name": "../x.bin", "tokens": 1, "sha256": "0"}], "shard entry 0 has no file name"),
    ("all", "no shard list"),
])
def test_malformed_manifest(small_shards, tmp_path, capsys, shards, message):
    data = tmp_path / "data"
    shutil.copytree(small_shards, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"] = shards
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=message):
        train(micro_cfg(data, tmp_path / "r"), log=quiet)


def test_report_on_damaged_metrics(run, capsys):
    path = run / "metrics.jsonl"
    good = path.read_bytes()
    path.write_bytes(good + os.urandom(300) + b"\n" + b"[1, 2]\n" + b'"text"\n' + good.splitlines(True)[0])
    rc, out, err = cli(capsys, "report", run)
    assert rc == 0 and "Traceback" not in err
    assert err.startswith("warning: skipped") and "damaged line" in err
    assert "val_loss" in out or "no evaluations" in out


def test_failed_prepare_leaves_nothing_and_the_fixed_rerun_works(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    rows = [json.dumps({"text": f"line {i} of some text"}) for i in range(40)]
    src.write_text("\n".join(rows + ["{not json"]) + "\n")
    line = one_line(*cli(capsys, "prepare", src, "--out", out, "--workers", "1")[::2])
    assert f"{src}:41: invalid JSON" in line
    assert not out.exists()  # nothing written: no state that a rerun would trip over
    src.write_text("\n".join(rows) + "\n")
    rc, _, err = cli(capsys, "prepare", src, "--out", out, "--workers", "1", "--val-fraction", "0.2")
    assert rc == 0, err
    assert (out / "manifest.json").is_file() and not (out / ".prepare").exists()
