"""Watching, comparing and coming back to runs: the status line (plain and on a terminal), the
metrics sinks (TensorBoard, wandb offline), loss-spike and skipped-step events, environment.json,
status.json and `gpt2lab runs`, `gpt2lab plot` and `gpt2lab report --markdown`. Real short runs
of the micro model."""

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest

from cli_helpers import DATA, micro_cfg, quiet
from gpt2lab.errors import UserError
from gpt2lab.fileio import file_sha256, write_json_atomic
from gpt2lab.metrics import read_metrics
from gpt2lab.progress import SpikeWatch
from gpt2lab.runinfo import list_runs, run_state
from gpt2lab.train import TrainingDiverged, train

FIELDS = ("step", "tokens", "loss", "lr", "norm", "tok/s", "MFU", "mem", "ms/step", "elapsed", "ETA")
QUIET_EVALS = ("eval.sample_every=-1",)


def cli(capsys, *args) -> tuple[int, str, str]:
    """The gpt2lab command in this process (faster than a subprocess): (exit code, stdout, stderr)."""
    from gpt2lab.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err


def micro_args(data, run, *extra):
    """micro_cfg's keys as command-line overrides, for the gpt2lab command."""
    return [f"data.dir={data}", f"train.run_dir={run}", "model.preset=micro", "train.device=cpu", "train.dtype=float32",
            "train.micro_batch=4", "train.seq_len=32", "optim.warmup_steps=2", "eval.val_tokens=1024", *extra]


# --- while a run runs ------------------------------------------------------------------------


def test_plain_status_lines_environment_and_status(small_shards, tmp_path):
    run = tmp_path / "run"
    lines = []
    train(micro_cfg(small_shards, run, *QUIET_EVALS), log=lines.append)
    steps = [line for line in lines if line.startswith("step ") and "/4 |" in line]
    assert len(steps) == 4, lines
    for line in steps:
        for field in FIELDS:
            assert field in line, (field, line)
    assert re.search(r"MFU \d+\.\d%", steps[-1]) and "step      4/4 | tokens 512 |" in steps[-1]
    assert any(line.startswith("MFU against ") and "measured" in line for line in lines)  # the peak, stated

    rec = read_metrics(run, "train")[-1]
    for key in ("loss", "lr", "grad_norm", "tokens", "tok_per_s", "mfu", "mem_bytes", "mem_peak_bytes", "elapsed_s",
                "eta_s"):
        assert isinstance(rec[key], (int, float)), key
    assert 0 < rec["mfu"] < 1.5 and rec["mem_bytes"] > 10 * 2**20

    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["numpy"] and env["packages"]["gpt2lab"]
    assert env["git"] is None or (len(env["git"]["commit"]) == 40 and isinstance(env["git"]["dirty"], bool))
    assert env["device"] == "cpu" and env["device_name"] and env["world_size"] == 1 and env["peak_flops"] > 0
    assert "measured" in env["peak_source"] and env["command"] and env["earlier"] == []
    assert env["data_manifest_sha256"] == file_sha256(small_shards / "manifest.json")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4 and status["pid"] == os.getpid()

    # a resume keeps the first start's record under "earlier"
    train(micro_cfg(small_shards, run, "train.max_steps=5", *QUIET_EVALS), resume=True, log=quiet)
    env = json.loads((run / "environment.json").read_text())
    assert env["start_step"] == 4 and [e["start_step"] for e in env["earlier"]] == [0]


def test_loss_spike_event_and_skip_nonfinite(small_shards, tmp_path):
    watch = SpikeWatch(2.0, 3)
    assert ([watch.check(x) for x in (3.0, 3.0, 3.0, 7.0, 3.1, 6.1)]
            == [None, None, None, 3.0, None, pytest.approx(9.1 / 3)])
    assert SpikeWatch(0.0, 1).check(100.0) is None  # 0 = off

    run = tmp_path / "spiky"  # every step over half the recent mean is a "spike": the event's path end to end
    lines = []
    train(micro_cfg(small_shards, run, "train.loss_spike=0.5", "train.loss_spike_window=2", *QUIET_EVALS),
          log=lines.append)
    events = read_metrics(run, "event")
    assert [e["step"] for e in events] == [3, 4] and all(e["event"] == "loss_spike" for e in events)
    assert events[0]["factor"] == pytest.approx(events[0]["loss"] / events[0]["mean"])
    assert any("loss spike: loss" in line for line in lines)

    # NaN/inf: skipped (no update) and counted, then the run stops at the (N+1)-th in a row
    run = tmp_path / "diverges"
    cfg = micro_cfg(small_shards, run, "optim.lr=1e30", "optim.grad_clip=0", "optim.warmup_steps=0",
                    "train.max_steps=12", "train.skip_nonfinite=2", "eval.every=-1", *QUIET_EVALS)
    with pytest.raises(TrainingDiverged, match=r"\(3 non-finite steps in a row\)"):
        train(cfg, log=quiet)
    skips = [e for e in read_metrics(run, "event") if e["event"] == "nonfinite_skip"]
    assert [e["in_row"] for e in skips] == [1, 2] and skips[1]["step"] == skips[0]["step"] + 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and "diverged" in status["message"]


@pytest.mark.slow
def test_tensorboard_and_wandb_offline_get_the_stream(small_shards, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "offline")  # and train.wandb_mode=offline: never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    run = tmp_path / "run"
    train(micro_cfg(small_shards, run, "train.tensorboard=true", "train.wandb_project=gpt2lab-test",
                    "train.wandb_mode=offline", *QUIET_EVALS), log=quiet)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run / "wandb").rglob("*"))
    run_id = (run / "wandb" / "gpt2lab_run_id").read_text().strip()
    assert offline[0].name.endswith(run_id)
    log = (offline[0] / f"run-{run_id}.wandb").read_bytes()  # wandb's record log (protobuf): the keys are in it
    for key in ("train/loss", "train/mfu", "train/tok_per_s", "train/mem_bytes", "train/lr", "val/val_loss"):
        assert key.encode() in log, key

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/mfu", "train/tok_per_s", "train/mem_bytes", "train/lr", "val/val_loss"} <= tags
    assert [e.step for e in acc.Scalars("train/mfu")] == [1, 2, 3, 4]


def _read_pty(fd: int, proc: subprocess.Popen, timeout: float) -> str:
    out, end = b"", time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    return out.decode(errors="replace")


def _in_terminal(args, cwd, timeout=240) -> tuple[int, str]:
    """Run the gpt2lab command with stdout and stderr on a pseudo-terminal; (exit code, what it showed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # a 200-column terminal
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, cwd=cwd, env=env)
    os.close(follower)
    try:
        text = _read_pty(leader, proc, timeout)
    finally:
        os.close(leader)
    return proc.returncode, text


@pytest.mark.slow
def test_terminal_mode_renders_a_live_line(small_shards, tmp_path):
    code, text = _in_terminal(["prepare", DATA / "wikipedia-en_head.jsonl", "--out", tmp_path / "data",
                               "--workers", "1"], tmp_path)
    assert code == 0, text
    assert "documents" in text and "MB/s" in text and "shards" in text and "ETA" in text  # a plain .jsonl: size known

    code, text = _in_terminal(["train", *micro_args(small_shards, tmp_path / "run", "train.max_steps=6",
                                                    "eval.every=3", *QUIET_EVALS)], tmp_path)
    assert code == 0, text
    redraws = len(re.findall("\r(?!\n)", text))  # a carriage return that starts no new line (the terminal's \r\n does)
    assert redraws >= 3, text  # the status line is redrawn in place, not printed line after line
    assert "%|" in text and "step      6/6" in text
    for field in FIELDS[1:]:
        assert field in text, field
    assert "val loss" in text and "Traceback" not in text  # log lines still come, above the live line
    plain = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("step      3 | val loss")]
    assert plain, text


# --- runs, report, plot ----------------------------------------------------------------------


def test_run_state_from_another_host(tmp_path):
    now = time.time()
    for age, expected in ((10, "running"), (600, "stopped")):
        write_json_atomic(tmp_path / "status.json", {"state": "running", "pid": 1,
                                                     "host": "not-" + socket.gethostname(), "updated": now - age})
        assert run_state(tmp_path, now)[0] == expected
    write_json_atomic(tmp_path / "status.json", {"state": "running", "pid": 2**22 + 7, "host": socket.gethostname(),
                                                 "updated": now})
    state, why = run_state(tmp_path, now)
    assert state == "stopped" and "gone" in why  # this host, a process that is not there: killed


@pytest.mark.slow
def test_runs_lists_finished_stopped_and_running(small_shards, tmp_path, capsys):
    root = tmp_path / "runs"
    train(micro_cfg(small_shards, root / "done", *QUIET_EVALS), log=quiet)
    with pytest.raises(TrainingDiverged):
        train(micro_cfg(small_shards, root / "broke", "optim.lr=1e30", "optim.grad_clip=0", "optim.warmup_steps=0",
                        "train.max_steps=12", "eval.every=-1", *QUIET_EVALS), log=quiet)
    live = root / "group" / "live"  # one level deeper: found too
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", "train",
                             *micro_args(small_shards, live, "train.max_steps=100000", "eval.every=-1", *QUIET_EVALS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (live / "status.json").is_file() and (live / "metrics.jsonl").is_file() and read_metrics(live, "train"):
                break  # started, and a step done
            time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read()
        code, out, err = cli(capsys, "runs", root)
        assert code == 0, err
        rows = {line.split()[0]: line for line in out.splitlines()[2:]}
        assert set(rows) == {"done", "broke", os.path.join("group", "live")}, out
        assert " finished " in rows["done"] and " 4/4 " in rows["done"] and " micro " in rows["done"]
        assert " stopped " in rows["broke"] and " running " in rows[os.path.join("group", "live")]
        by_name = {row["name"]: row for row in list_runs(root)}
        assert by_name["done"]["val_loss"] == read_metrics(root / "done", "val")[-1]["val_loss"]
        assert by_name["done"]["tokens"] == 4 * 4 * 32 and by_name["live"]["status"] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)  # killed with no chance to write: its status.json still says running
        proc.wait(timeout=30)
        proc.stderr.close()
    row = {row["name"]: row for row in list_runs(root)}["live"]
    assert row["status"] == "stopped" and "gone" in row["status_detail"]
    assert_one_line_error(*cli(capsys, "runs", tmp_path / "nope")[::2])


def _history(run, kind, key):
    return [r[key] for r in read_metrics(run, kind)]


@pytest.mark.slow
def test_plot_two_runs_and_markdown_report(small_shards, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from gpt2lab.plot import plot_runs

    evals = ("train.max_steps=6", "eval.every=3", "eval.hellaswag_every=3",
             f"eval.hellaswag_data={DATA / 'hellaswag_val_120.jsonl'}", "eval.hellaswag_items=8",
             "eval.lambada_every=3", f"eval.lambada_data={DATA / 'lambada_test_plain_text_head.txt'}",
             "eval.lambada_items=8", *QUIET_EVALS)
    runs = [tmp_path / "lr6e-4", tmp_path / "lr2e-3"]
    train(micro_cfg(small_shards, runs[0], *evals), log=quiet)
    train(micro_cfg(small_shards, runs[1], "optim.lr=2e-3", *evals), log=quiet)

    fig = plot_runs(runs, tmp_path / "two.png")
    loss_ax, bpb_ax, lr_ax, hs_ax, lam_ax = fig.axes
    expected = {  # panel -> (line label suffix, metrics kind, key)
        loss_ax: [(" train", "train", "loss"), (" val", "val", "val_loss")], bpb_ax: [("", "val", "val_bpb")],
        lr_ax: [("", "train", "lr")], hs_ax: [("", "hellaswag", "completion_acc_norm")],
        lam_ax: [("", "lambada", "acc")],
    }
    for ax, series in expected.items():
        lines = {line.get_label(): line for line in ax.get_lines()}
        for suffix, kind, key in series:
            drawn = []
            for run in runs:
                line = lines[run.name + suffix]  # one curve per run, named in the legend
                assert list(line.get_ydata()) == pytest.approx(_history(run, kind, key)), (run.name, suffix)
                drawn.append(line)
            assert drawn[0].get_color() != drawn[1].get_color()
            assert len(drawn[0].get_xdata()) == len(_history(runs[0], kind, key)) >= 2
            if ax in (loss_ax, lr_ax):
                assert list(drawn[0].get_ydata()) != list(drawn[1].get_ydata())  # another lr: other curves
    hs_refs = sorted(line.get_ydata()[0] for line in hs_ax.get_lines() if line.get_label().startswith("GPT-"))
    assert hs_refs == [0.2955, 0.337]
    assert list(lines[runs[0].name].get_xdata()) == [3 * 128, 6 * 128]  # LAMBADA at steps 3 and 6: tokens, not steps

    png = tmp_path / "cli.png"
    code, _, err = cli(capsys, "plot", *runs, "--out", png, "--log-x")
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, err
    assert_one_line_error(*cli(capsys, "plot", tmp_path / "nope", "--out", tmp_path / "x.png")[::2])
    assert not (tmp_path / "x.png").exists()
    for bad in (tmp_path / "x.txt", png / "x.png"):  # a format matplotlib lacks; a folder that is a file
        assert_one_line_error(*cli(capsys, "plot", *runs, "--out", bad)[::2])

    code, md, err = cli(capsys, "report", runs[0], "--markdown")
    assert code == 0, err
    for part in ("# Run `lr6e-4`", "| MFU (median) |", "| tokens/s (median) |", "| best checkpoint |",
                 "| training time |", "## Environment", "## Config", "```yaml", "## Evaluations", "plot.png)"):
        assert part in md, part
    assert (runs[0] / "plot.png").stat().st_size > 10_000
    # the plot's link holds wherever the report is opened from: absolute, not relative to here (issue 29 item 15)
    monkeypatch.chdir(runs[0].parent)
    code, md, err = cli(capsys, "report", runs[0].name, "--markdown")
    assert code == 0 and f"]({runs[0].resolve() / 'plot.png'})" in md, err
    code, out, _ = cli(capsys, "report", runs[0])
    assert code == 0 and "status: finished, step 6/6" in out and "command: " in out
    assert "MFU peak: " in out and "packages: python " in out


def test_bad_wandb_install_or_labels_are_user_errors(small_shards, tmp_path, monkeypatch):
    from gpt2lab.plot import plot_runs

    with pytest.raises(UserError, match="labels"):
        plot_runs([tmp_path / "a", tmp_path / "b"], labels=["one"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(UserError, match="pip install 'gpt2lab\\[wandb\\]'"):
        train(micro_cfg(small_shards, tmp_path / "run", "train.wandb_project=p", *QUIET_EVALS), log=quiet)


def test_training_time_adds_up_every_start_of_a_run(tmp_path):
    """Each start's elapsed_s begins again; a resumed start slow to its first step (compiling) has a first
    elapsed_s above the last one of the start before, and is still a new start (environment.json's steps)."""
    from gpt2lab.runinfo import run_figures

    recs = [{"kind": "train", "step": s, "elapsed_s": float(e), "loss": 1.0}
            for s, e in [(1, 10), (2, 12), (3, 14), (4, 16), (5, 18), (6, 30), (7, 32), (8, 34), (9, 36), (10, 38)]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_json_atomic(tmp_path / "environment.json", {"start_step": 5, "earlier": [{"start_step": 0}]})
    assert run_figures(tmp_path)["train_seconds"] == 18 + 38


def test_markdown_report_of_a_run_whose_last_loss_was_not_finite(small_shards, tmp_path, capsys):
    run = tmp_path / "run"
    train(micro_cfg(small_shards, run, "train.max_steps=2", *QUIET_EVALS), log=quiet)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "train")
    lines[last] = json.dumps({**json.loads(lines[last]), "loss": "nan"})  # as metrics write a NaN loss
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code, md, err = cli(capsys, "report", run, "--markdown")
    assert code == 0 and "| last train loss | nan |" in md, err


# --- hostile run files: runs, report and plot read them, warn, and go on ---------------------------------------


@pytest.fixture(scope="module")
def finished_run(small_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("hostile") / "run"
    train(micro_cfg(small_shards, run, "train.max_steps=2", *QUIET_EVALS), log=quiet)
    return run


def copy_run(run, dest):
    import shutil

    return shutil.copytree(run, dest)


@pytest.mark.parametrize("status, why", [
    ({"state": "running", "pid": 1, "host": "elsewhere", "updated": "soon"}, "'updated' is 'soon', not a Unix time"),
    ({"state": "running", "pid": "1", "host": socket.gethostname()}, "'pid' is '1', not a process id"),
    ({"state": "running", "pid": 0, "host": socket.gethostname()}, "'pid' is 0, not a process id"),
    ({"state": ["finished"]}, "'state' is ['finished'], not running, finished or stopped"),
    ({"state": "stopped", "message": {"a": 1}}, "'message' is {'a': 1}, not a string"),
    ({"pid": 3}, "no 'state'"),
    ([1, 2], "not a JSON object"),
])
def test_a_damaged_status_json_is_a_warning_not_a_traceback(tmp_path, capsys, status, why):
    write_json_atomic(tmp_path / "status.json", status)
    assert run_state(tmp_path) == ("", "damaged status.json")
    assert f"warning: {tmp_path / 'status.json'} is damaged ({why})" in capsys.readouterr().err


def test_hostile_run_files_never_break_runs_report_or_plot(finished_run, tmp_path, capsys):
    """The trial's files: "updated": "soon" crashed `report RUN` and `runs DIR` (one bad folder hid all); a string loss
    crashed `report --markdown`. Fields of the wrong type are skipped with a warning naming the file."""
    root = tmp_path / "runs"
    good, bad = copy_run(finished_run, root / "good"), copy_run(finished_run, root / "bad")
    write_json_atomic(bad / "status.json", {"state": "running", "pid": 1, "host": "elsewhere", "updated": "soon"})
    env = json.loads((bad / "environment.json").read_text())
    write_json_atomic(bad / "environment.json", {**env, "git": "abc", "packages": [1], "start_step": "zero",
                                                 "peak_source": 7, "earlier": ["x", {"start_step": [1]}]})
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    last = [json.loads(line) for line in lines if json.loads(line)["kind"] == "train"][-1]
    extra = [{**last, "loss": "abc"}, {**last, "tokens": "many"}, {"kind": "val", "step": 2, "val_loss": [1]},
             {"kind": "train", "step": 3, "lr": {"x": 1}}]
    (bad / "metrics.jsonl").write_text("\n".join(lines + [json.dumps(r) for r in extra]) + "\n")
    code, out, err = cli(capsys, "runs", root)
    assert code == 0 and "Traceback" not in err, err
    assert {line.split()[0] for line in out.splitlines()[2:]} == {"good", "bad"}, out
    assert f"{bad / 'status.json'} is damaged ('updated' is 'soon'" in err
    assert f"skipped 4 damaged line(s) of {bad / 'metrics.jsonl'} (line {len(lines) + 1}, " in err
    assert [r["train_loss"] for r in list_runs(root)] == [last["loss"]] * 2  # the damaged records left out
    for args in (["report", bad], ["report", bad, "--markdown", "--plot", tmp_path / "p.png"],
                 ["report", bad, "--json"]):
        code, out, err = cli(capsys, *args)
        assert code == 0 and out and "Traceback" not in err, (args, err)
    code, md, err = cli(capsys, "report", copy_run(bad, tmp_path / "again"), "--markdown")
    assert code == 0 and "| last train loss |" in md, err
    assert "environment.json: left out fields of the wrong type (start_step, packages, git, peak_source, earlier: " \
           "an entry); the file is damaged" in err
    code, _, err = cli(capsys, "plot", bad, good, "--out", tmp_path / "both.png")
    assert code == 0 and (tmp_path / "both.png").is_file(), err


def test_a_plot_into_a_folder_one_may_not_write_is_one_line(finished_run, tmp_path, capsys, monkeypatch):
    import errno

    pytest.importorskip("matplotlib")
    from gpt2lab import plot

    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(plot, "write_atomic", refuse)  # as a read-only folder does (tests may run as root)
    code, _, err = cli(capsys, "plot", finished_run, "--out", tmp_path / "ro" / "p.png")
    assert_one_line_error(code, err)
    assert f"cannot write {tmp_path / 'ro' / 'p.png'} (Permission denied)" in err


def test_a_markdown_report_of_a_folder_one_may_not_write_shows_no_plot(finished_run, tmp_path, capsys, monkeypatch):
    """report --markdown raised OSError on .tmp-plot.png in a read-only run folder: now the report comes without
    the plot and one warning says so; a --plot FILE that cannot be written is the user's one-line error."""
    import errno

    pytest.importorskip("matplotlib")
    from gpt2lab import plot

    run = copy_run(finished_run, tmp_path / "run")

    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(plot, "write_atomic", refuse)  # as a read-only folder does (tests may run as root)
    code, md, err = cli(capsys, "report", run, "--markdown")
    assert code == 0 and "## Figures" in md and "![" not in md, err
    assert err.strip() == (f"warning: cannot write {run / 'plot.png'} (Permission denied): the report shows no plot; "
                           "--plot FILE writes it elsewhere")
    assert_one_line_error(*cli(capsys, "report", run, "--markdown", "--plot", tmp_path / "x.png")[::2])
    monkeypatch.undo()
    if os.geteuid() != 0:  # a real read-only folder
        os.chmod(run, 0o555)
        try:
            code, md, err = cli(capsys, "report", run, "--markdown")
            assert code == 0 and "![" not in md and "the report shows no plot" in err, err
        finally:
            os.chmod(run, 0o755)


def test_a_sample_seed_out_of_range_is_a_usage_error(finished_run, capsys):
    with pytest.raises(SystemExit) as e:
        cli(capsys, "sample", finished_run, "--seed", "100000000000000000000000")
    assert e.value.code == 2 and "must be >= 0 and <= 9223372036854775807" in capsys.readouterr().err
