import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import gpt2lab
from cli_helpers import one_line_error as assert_one_line_error
from gpt2lab.checkpoint import list_checkpoints, load_model
from gpt2lab.config import config_doc
from gpt2lab.evals.loss import eval_windows, evaluate_loss
from gpt2lab.metrics import read_metrics

pytestmark = pytest.mark.slow  # every test runs the gpt2lab command

SUBCOMMANDS = ["quickstart", "prepare", "train", "sample", "eval", "bench", "config", "report", "runs", "plot"]


def test_help():
    r = gpt2lab("--help")
    assert r.returncode == 0 and "usage: gpt2lab" in r.stdout
    for cmd in SUBCOMMANDS:
        assert cmd in r.stdout
    r = gpt2lab("--version")
    assert r.returncode == 0 and r.stdout.startswith("gpt2lab ")


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd):
    r = gpt2lab(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert f"usage: gpt2lab {cmd}" in r.stdout and not r.stderr


def test_help_defaults_come_from_the_code():
    """--help shows each option's default, the library function's own; choices are the config's."""
    import inspect
    import typing

    from gpt2lab.cli import build_parser
    from gpt2lab.config import TrainConfig
    from gpt2lab.data.prepare import prepare
    from gpt2lab.generate import generate_text

    commands = build_parser()._subparsers._group_actions[0].choices
    sample, prep, ev = (" ".join(commands[c].format_help().split()) for c in ("sample", "prepare", "eval"))
    for name in ("num_samples", "max_new_tokens", "temperature", "top_k", "top_p", "device"):
        assert f"(default: {inspect.signature(generate_text).parameters[name].default})" in sample, name
    assert f"(default: {inspect.signature(prepare).parameters['shard_tokens'].default})" in prep
    assert "{" + ",".join(typing.get_args(typing.get_type_hints(TrainConfig)["dtype"])) + "}" in ev
    assert commands["sample"].parse_args(["run"]).max_new_tokens == 100  # the default reaches the command
    # the eval help names every task and which take a Hugging Face model (issue 29 item 12)
    assert "any lm-evaluation-harness task" in " ".join(build_parser().format_help().split()).replace("- ", "-")
    assert "harness (any lm-evaluation-harness task" in ev and "hub name (loss: with --data)" in ev
    for option, default in (("--limit", "0"), ("--batch-size", "8"), ("--style", "both"), ("--tasks", "hellaswag")):
        assert re.search(f"{option} \\S+ (?:(?! --).)*?\\(default: {default}\\)", ev), option


def test_console_script_installed():
    script = Path(sys.executable).with_name("gpt2lab")
    if not script.is_file():
        pytest.skip("no gpt2lab console script next to this Python")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: gpt2lab" in r.stdout


def test_no_command_is_usage_error():
    r = gpt2lab()
    assert r.returncode == 2 and "see gpt2lab --help" in r.stderr and "Traceback" not in r.stderr


def test_unknown_key_is_one_line_error(tmp_path):
    line = assert_one_line_error(gpt2lab("train", "optim.lrr=1e-3", cwd=tmp_path))
    assert "'optim.lrr'" in line and "did you mean 'optim.lr'" in line
    line = assert_one_line_error(gpt2lab("train", "max_step=3", cwd=tmp_path))
    assert "'max_step'" in line
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_value_is_one_line_error(tmp_path):
    line = assert_one_line_error(gpt2lab("train", "train.max_steps=abc", cwd=tmp_path))
    assert "'train.max_steps'" in line


def test_missing_config_file_is_one_line_error(tmp_path):
    line = assert_one_line_error(gpt2lab("train", "--config", tmp_path / "nope.yaml", cwd=tmp_path))
    assert "nope.yaml" in line and "not found" in line


def test_missing_data_is_one_line_error(tmp_path):
    line = assert_one_line_error(gpt2lab("train", "preset=micro", f"data.dir={tmp_path / 'no-data'}",
                                         f"train.run_dir={tmp_path / 'run'}", "device=cpu", cwd=tmp_path))
    assert "no-data" in line


def test_sample_missing_checkpoint_is_one_line_error(tmp_path):
    line = assert_one_line_error(gpt2lab("sample", tmp_path / "no-run", cwd=tmp_path))
    assert "no-run" in line


def test_print_config(tmp_path):
    r = gpt2lab("train", "--print-config", "preset=micro", "lr=1e-3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import yaml

    printed = yaml.safe_load(r.stdout)
    assert printed["model"]["n_layer"] == 2 and printed["optim"]["lr"] == 1e-3
    assert not (tmp_path / "runs").exists()


def test_config_doc():
    r = gpt2lab("config", "--doc")
    assert r.returncode == 0, r.stderr
    assert r.stdout == config_doc()
    assert "`optim.lr`" in r.stdout and "`train.max_steps`" in r.stdout


def test_end_to_end(shakespeare_head, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    r = gpt2lab("prepare", shakespeare_head, "--out", data, "--workers", "1", "--val-fraction", "0.1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((data / "manifest.json").read_text())
    assert 0 < manifest["tokens"]["val"] < manifest["tokens"]["train"]
    assert r.stdout.count("done: ") == 1 and f"wrote {data}" not in r.stdout  # its summary, once (issue 29 item 16)
    # the same prepare again: already complete, nothing redone, exit 0 (issue 29 item 16)
    r = gpt2lab("prepare", shakespeare_head, "--out", data, "--workers", "1", "--val-fraction", "0.1", cwd=tmp_path)
    assert r.returncode == 0 and "already holds this prepare, complete" in r.stdout, r.stderr
    assert json.loads((data / "manifest.json").read_text()) == manifest
    assert "--overwrite" in assert_one_line_error(gpt2lab("prepare", shakespeare_head, "--out", data, "--workers", "1",
                                                         "--val-fraction", "0.2", cwd=tmp_path))  # another option

    r = gpt2lab("train", "preset=micro", f"data.dir={data}", f"train.run_dir={run}", "device=cpu", "dtype=float32",
                "micro_batch=4", "seq_len=32", "max_steps=3", "warmup_steps=1", "eval.every=0", "val_tokens=1024",
                "sample_count=1", "sample_tokens=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "done: 3 steps" in r.stdout
    assert [x["step"] for x in read_metrics(run, "train")] == [1, 2, 3]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003"]

    r1 = gpt2lab("sample", run, "--max-new-tokens", 5, "--seed", 1, cwd=tmp_path)
    r2 = gpt2lab("sample", run, "--max-new-tokens", 5, "--seed", 1, "--prompt", "ROMEO:", "-n", 2, cwd=tmp_path)
    r3 = gpt2lab("sample", run, "--max-new-tokens", 5, "--seed", 1, cwd=tmp_path)
    for r in (r1, r2, r3):
        assert r.returncode == 0, r.stderr
    assert r1.stdout == r3.stdout and r1.stdout.endswith("\n")  # seeded: reproducible
    assert r2.stdout.count("--- sample") == 2 and r2.stdout.count("ROMEO:") >= 2

    r = gpt2lab("eval", "loss", run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["task"] == "loss" and result["split"] == "val" and result["tokens"] == 1024
    assert math.isfinite(result["loss"])
    # it scores the same windows as the run's own validation; (the CLI may use bf16 autocast, so approx)
    model, cfg = load_model(run)
    expected = evaluate_loss(model, eval_windows(data, "val", 32, 1024), 8, "cpu")
    assert result["loss"] == pytest.approx(expected, abs=0.05)
    assert read_metrics(run, "val")[-1]["val_loss"] == pytest.approx(expected, rel=1e-5)

    # like every evaluation, it writes OUT/<task>_summary.json (issue 29 item 5)
    assert json.loads((tmp_path / "evals" / "run" / "loss_summary.json").read_text()) == {
        k: v for k, v in result.items() if k != "out"}

    r = gpt2lab("eval", "loss", run, "--tokens", 256, "--seq-len", 16, "--batch-size", 3, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["tokens"] == 256

    # --resume of a finished run says so before building anything (issue 29 item 16)
    r = gpt2lab("train", "--resume", run, "train.compile=true", cwd=tmp_path)
    assert r.returncode == 0 and "has already done 3 steps" in r.stdout and "model " not in r.stdout, r.stderr

    # a converted checkpoint has no data of its own: eval loss says to pass --data, not that a default is missing
    # (issue 29 item 9)
    assert gpt2lab("convert", "to-hf", run, tmp_path / "hf", cwd=tmp_path).returncode == 0
    assert gpt2lab("convert", "from-hf", tmp_path / "hf", tmp_path / "ck", cwd=tmp_path).returncode == 0
    assert "pass --data" in assert_one_line_error(gpt2lab("eval", "loss", tmp_path / "ck", cwd=tmp_path))

    # a second train into the same run folder without --resume: one-line error
    line = assert_one_line_error(gpt2lab("train", "preset=micro", f"data.dir={data}", f"train.run_dir={run}",
                                         "device=cpu", "micro_batch=4", "seq_len=32", "max_steps=3", cwd=tmp_path))
    assert "--resume" in line


@pytest.mark.parametrize("args, says", [
    (["sample", "run", "-n", "0"], "argument --num-samples/-n: 0 must be >= 1"),
    (["sample", "run", "--top-k", "-1"], "argument --top-k: -1 must be >= 0"),
    (["sample", "run", "--top-p", "1.5"], "argument --top-p: 1.5 must be > 0 and <= 1"),
    (["sample", "run", "--temperature", "nan"], "argument --temperature: nan must be >= 0"),
    (["eval", "loss", "run", "--batch-size", "0"], "argument --batch-size: 0 must be >= 1"),
    (["eval", "hellaswag", "run", "--limit", "-5"], "argument --limit: -5 must be >= 0"),
    (["bench", "--steps", "two"], "argument --steps: 'two' is not an integer"),
    # a command-line flag's error names the flag, not the library's parameter (issue 29 item 13)
    (["prepare", "x.txt", "--out", "d", "--val-fraction", "1.5"], "argument --val-fraction: 1.5 must be >= 0 and < 1"),
    (["prepare", "x.txt", "--out", "d", "--shard-tokens", "0"], "argument --shard-tokens: 0 must be >= 1"),
    (["prepare", "x.txt", "--out", "d", "--val-tokens", "-1"], "argument --val-tokens: -1 must be >= 0"),
])
def test_bad_numbers_are_usage_errors(args, says):
    r = gpt2lab(*args)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    # one line, no usage block above it, pointing at the command's help (issue 29 item 13)
    assert r.stderr == f"error: {r.stderr[7:].splitlines()[0]}\n" and f"(see gpt2lab {args[0]} --help)" in r.stderr


def test_cuda_device_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = assert_one_line_error(gpt2lab("sample", tmp_path, "--device", "cuda"))
    assert "no CUDA GPU" in line and "use cpu" in line


def test_an_error_line_is_one_write(monkeypatch, tmp_path):
    """Under torchrun every rank writes its error to the same pipe; print's two writes (the text, then the
    newline, each a system call with PYTHONUNBUFFERED) let another rank's line in between: 'error: ...againerror:
    ...' in CI (tests/test_lock.py). The line and its newline now go in one write."""
    from gpt2lab.cli import main

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, s):
            self.writes.append(s)
            return len(s)

        def flush(self):
            pass

    err = Recorder()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["sample", str(tmp_path / "missing")]) == 2
    assert len(err.writes) == 1 and err.writes[0].startswith("error: ") and err.writes[0].endswith("\n"), err.writes
    assert err.writes[0].count("\n") == 1
