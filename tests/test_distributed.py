"""Many processes through torchrun (gloo on CPU, real subprocesses), checked against one process.

The reference is one process with 2 micro-batches of gradient accumulation; the runs under test
are 2 processes with 1 micro-batch each, so both see the same 256 tokens per optimizer step
(fp32, dropout 0, deterministic kernels). Tolerances on the weights after 6 AdamW steps:

- DDP: 1e-6 absolute (measured: 0.0, bitwise equal; averaging two gradients by all-reduce
  rounds exactly as adding two halves does).
- FSDP2: 2e-5 absolute (measured: about 1.7e-6; the reduce-scatter divides before summing).

A bug (unsynchronised gradients, a wrong batch split, a missed optimizer state) moves weights
by about lr = 1e-3 per step, far above both tolerances.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import needs_fast_bf16, socket_port
from gpt2lab import checkpoint as ckpt
from gpt2lab import layout
from gpt2lab.cli import main as cli_main
from gpt2lab.config import load_config
from gpt2lab.data import TokenLoader
from gpt2lab.data.shards import write_shard
from gpt2lab.errors import UserError
from gpt2lab.evals.loss import eval_windows, evaluate_loss
from gpt2lab.metrics import read_metrics
from gpt2lab.train import train

STEPS = 6
DDP_ATOL = 1e-6
FSDP_ATOL = 2e-5
# 31 validation windows of 32 tokens: 16 on rank 0 and 15 on rank 1, so the uneven split is exercised.
COMMON = [
    "model.preset=micro", "model.dropout=0.0", "train.device=cpu", "train.dtype=float32", "train.deterministic=true",
    "train.threads=1", "train.micro_batch=4", "train.seq_len=32", "train.total_batch_tokens=256",
    f"train.max_steps={STEPS}", "train.ckpt_every=3", "train.keep_checkpoints=0", "optim.warmup_steps=2",
    "optim.lr=1e-3", "eval.every=3", "eval.val_tokens=992", "eval.val_batch=4", "eval.sample_count=1",
    "eval.sample_tokens=4",
]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(args, log: Path, cwd: Path, nproc: int = 2, entry=("-m", "gpt2lab")) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *entry, *args]
    with open(log, "w") as f:  # its own process group, so that kill_job also ends workers torchrun left behind
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env(), start_new_session=True)


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process of its group (a worker of a failed test must not train on)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_ok(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    finally:
        kill_job(proc)
    return log.read_text()


def weights(run: Path, step: int = STEPS) -> dict:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / layout.MODEL_FILE))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and len(a) > 10
    return max((a[k] - b[k]).abs().max().item() for k in a)


def cfg_for(data, run, *extra):
    return load_config(None, [*COMMON, f"data.dir={data}", f"train.run_dir={run}", *extra])


@pytest.fixture(scope="module")
def runs(small_shards, small_data, tmp_path_factory):
    """The reference (1 process x 2 micro-batches, in this process) and torchrun DDP and FSDP2 runs of 2 x 1.

    All three also score 13 HellaSwag items and 11 LAMBADA passages at their evaluations (uneven over 2 ranks).
    """
    root = tmp_path_factory.mktemp("dist")
    hs = root / "hellaswag.jsonl"
    hs.write_text("".join((small_data / "hellaswag_val_120.jsonl").read_text().splitlines(True)[:13]))
    lb = root / "lambada.txt"  # 11 passages: uneven over 2 ranks too
    lb.write_text("".join((small_data / "lambada_test_plain_text_head.txt").read_text().splitlines(True)[:11]))
    evals = ["eval.hellaswag_every=3", f"eval.hellaswag_data={hs}", "eval.lambada_every=3", f"eval.lambada_data={lb}"]
    paths = {name: root / name for name in ("single", "ddp", "fsdp")}
    args = ["train", *COMMON, *evals, f"data.dir={small_shards}"]
    procs = {p: torchrun([*args, f"train.run_dir={paths[p]}", f"train.parallel={p}"], root / f"{p}.log", root)
             for p in ("ddp", "fsdp")}
    train(cfg_for(small_shards, paths["single"], *evals), log=lambda _m: None)  # while the two jobs run
    logs = {p: run_ok(procs[p], root / f"{p}.log") for p in procs}
    return paths, logs


@pytest.mark.slow
def test_ddp_two_processes_equal_one_with_accumulation(runs):
    paths, logs = runs
    assert re.search(r"2 process\(es\) on cpu \| ddp \| fp32 \| batch 256 tokens = 4 x 32 x 1 accum x 2", logs["ddp"])
    diff = max_diff(weights(paths["single"]), weights(paths["ddp"]))
    print(f"DDP 2x1 vs 1x2: max abs weight diff {diff:.3g}")
    assert diff <= DDP_ATOL
    single, ddp = read_metrics(paths["single"], "train"), read_metrics(paths["ddp"], "train")
    assert [r["step"] for r in ddp] == list(range(1, STEPS + 1))  # rank 0 alone writes metrics, once per step
    for a, b in zip(single, ddp):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    # only rank 0 logs and samples: each line once in torchrun's merged output
    assert logs["ddp"].count(f"step {STEPS:>6}/{STEPS}") == 1
    assert logs["ddp"].count("sample: ") == 1 and logs["ddp"].count("saved ") == 1


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_with_accumulation(runs):
    paths, logs = runs
    assert "| fsdp | fp32 |" in logs["fsdp"]
    diff = max_diff(weights(paths["single"]), weights(paths["fsdp"]))
    print(f"FSDP2 2x1 vs 1x2: max abs weight diff {diff:.3g}")
    assert 0 < diff <= FSDP_ATOL  # > 0: the weights really went through sharding, not a replica
    single, fsdp = read_metrics(paths["single"], "train"), read_metrics(paths["fsdp"], "train")
    for a, b in zip(single, fsdp, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        # step 1: 2.5e-6 apart (fp32 reduce-scatter); Adam then amplifies round-off in tiny gradients,
        # about 2e-4 by step 6
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5 if a["step"] == 1 else 1e-3)
    assert logs["fsdp"].count("sample: ") == 1
    # sharded checkpoint (one file per rank) beside the consolidated model file that sampling reads
    last = ckpt.list_checkpoints(paths["fsdp"])[-1]
    assert sorted(p.name for p in (last / layout.DCP_DIR).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert "optimizer" not in ckpt.load_train_state(last)
    model, _ = ckpt.load_model(paths["fsdp"])
    assert model.lm_head.weight is model.transformer.wte.weight
    assert cli_main(["sample", str(paths["fsdp"]), "--max-new-tokens", "3", "--seed", "0", "--device", "cpu"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_val_loss_same_on_one_and_two_processes(runs, small_shards, parallel):
    paths, _ = runs
    val_1 = read_metrics(paths["single"], "val")
    val_2 = read_metrics(paths[parallel], "val")
    assert [r["step"] for r in val_2] == [3, STEPS] and [r["val_tokens"] for r in val_2] == [992, 992]
    for a, b in zip(val_1, val_2, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    # the same weights scored by one process here (batches grouped differently: fp32 rounding only)
    model, _ = ckpt.load_model(paths[parallel])
    here = evaluate_loss(model, eval_windows(small_shards, "val", 32, 992), 4, "cpu")
    assert here == pytest.approx(val_2[-1]["val_loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("parallel, atol", [("ddp", DDP_ATOL), ("fsdp", FSDP_ATOL)])
def test_checkpoint_of_two_processes_resumes_on_one(runs, small_shards, tmp_path, parallel, atol):
    paths, _ = runs
    run = tmp_path / "run"
    shutil.copytree(paths[parallel], run)
    shutil.rmtree(run / "checkpoints" / f"step_{STEPS:08d}")
    lines = []
    summary = train(cfg_for(small_shards, run, f"train.parallel={parallel}"), resume=True, log=lines.append)
    assert summary["steps"] == STEPS
    assert "checkpoint written by 2 process(es), continuing on 1" in lines
    assert any(re.search(r"resumed from .*step_00000003 \(step 3\)", line) for line in lines)
    diff = max_diff(weights(paths[parallel]), weights(run))  # the 2-process run that went on to step 6
    print(f"{parallel}: resumed on 1 vs continued on 2: max abs weight diff {diff:.3g}")
    assert diff <= atol


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_checkpoint_of_one_process_resumes_on_two_with_accumulation(runs, tmp_path, parallel):
    """1 x (2 micro-batches of 4) -> 2 x (2 micro-batches of 2): the same 256 tokens per step, and the
    gradient sync is skipped on the first micro-batch. The checkpoint is unsharded (FSDP2 shards it
    on load); the new rank has no saved RNG state and gets one derived from the seed. Also the
    `gpt2lab` command form of torchrun. Summation order differs, hence the FSDP2 tolerance."""
    paths, _ = runs
    run = tmp_path / "run"
    shutil.copytree(paths["single"], run)
    shutil.rmtree(run / "checkpoints" / f"step_{STEPS:08d}")
    gpt2lab = Path(sys.executable).with_name("gpt2lab")
    entry = ("--no-python", str(gpt2lab)) if gpt2lab.is_file() else ("-m", "gpt2lab")
    args = ["train", "--resume", str(run), "train.micro_batch=2", f"train.parallel={parallel}"]
    log = run_ok(torchrun(args, tmp_path / "log", tmp_path, entry=entry), tmp_path / "log")
    assert "checkpoint written by 1 process(es), continuing on 2" in log
    assert f"| {parallel} | fp32 | batch 256 tokens = 2 x 32 x 2 accum x 2" in log
    diff = max_diff(weights(paths["single"]), weights(run))
    print(f"{parallel}: 1 process resumed on 2 with accumulation: max abs weight diff {diff:.3g}")
    assert diff <= FSDP_ATOL
    assert [r["step"] for r in read_metrics(run, "train")] == list(range(1, STEPS + 1))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
@pytest.mark.parametrize("task, items, exact, close", [
    ("hellaswag", 13, ("completion_acc", "completion_acc_norm", "lm_eval_acc", "lm_eval_acc_norm", "lm_eval_acc_bytes"),
     ()),
    ("lambada", 11, ("acc",), ("ppl", "token_ppl")),
])
def test_tasks_in_training_same_on_one_and_two_processes(runs, parallel, task, items, exact, close):
    """DDP scores its share on each rank; FSDP2 scores a gathered copy on rank 0. Both match one process
    (accuracies exactly; perplexities within the weights' own difference)."""
    paths, _ = runs
    ref, got = (read_metrics(paths[p], task) for p in ("single", parallel))
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [3, STEPS]
    for a, b in zip(ref, got):
        assert a["items"] == b["items"] == items
        for key in exact:
            assert a[key] == b[key], (key, a, b)
        for key in close:
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


@pytest.mark.slow
def test_ddp_checkpoint_resumes_as_fsdp_on_one_process(runs, small_shards, tmp_path):
    """One process has nothing to shard: an fsdp run there loads a DDP checkpoint and writes a sharded one."""
    paths, _ = runs
    run = tmp_path / "run"
    shutil.copytree(paths["ddp"], run)
    summary = train(cfg_for(small_shards, run, "train.parallel=fsdp", "train.max_steps=7"), resume=True,
                    log=lambda _m: None)
    assert summary["steps"] == 7 and (ckpt.list_checkpoints(run)[-1] / layout.DCP_DIR).is_dir()


def test_loader_gives_no_token_twice_across_ranks(tmp_path):
    """Token ids here are their own positions, so a repeated id is a repeated token."""
    sizes, B, T, world = [1000, 37, 613], 2, 8, 3
    start = 0
    for i, n in enumerate(sizes):
        write_shard(tmp_path / f"train_{i:06d}.bin", np.arange(start, start + n))
        start += n
    loaders = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=world) for r in range(world)]
    seen = [[] for _ in range(world)]
    for _ in range(loaders[0].steps_per_epoch):
        assert len({str(ld.state_dict()) for ld in loaders}) == 1  # every rank at the same place
        for r, ld in enumerate(loaders):
            seen[r].append(ld.next_batch()[0].flatten().numpy())
    assert all(ld.state_dict()["epoch"] == 0 for ld in loaders)
    for ld in loaders:  # the next batch starts epoch 1
        ld.next_batch()
    assert all(ld.state_dict()["epoch"] == 1 for ld in loaders)
    per_rank = [np.concatenate(s) for s in seen]
    everything = np.concatenate(per_rank)
    assert len(np.unique(everything)) == len(everything), "a token was read twice in one epoch"
    for r in range(world):
        assert len(per_rank[r]) == len(per_rank[0]) > 0
    assert len(everything) > 0.9 * (sizes[0] + sizes[2])  # and the epoch covered the usable shards


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _wait_for_train_steps(run: Path, log: Path, proc: subprocess.Popen, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "metrics.jsonl").is_file() or len(read_metrics(run, "train")) < n:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


LONG = ["model.preset=micro", "train.device=cpu", "train.threads=1", "train.micro_batch=4", "train.seq_len=32",
        "train.max_steps=1000000", "optim.warmup_steps=2", "eval.every=-1", "eval.sample_every=-1"]


@needs_fast_bf16
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_killed_rank_ends_the_job(runs, small_shards, tmp_path):
    """SIGKILL one worker of a 2-process FSDP2 job (bf16 mixed precision on CPU): torchrun stops the other and fails.

    Before that, its first step (before any update: same weights and tokens as the fp32 reference
    run) shows bf16 mixed precision computing the same loss and gradient norm up to bf16 rounding.
    """
    run, log = tmp_path / "run", tmp_path / "log"
    proc = torchrun(["train", *LONG, "train.parallel=fsdp", "train.dtype=bfloat16", f"data.dir={small_shards}",
                     f"train.run_dir={run}"], log, tmp_path)
    try:
        _wait_for_train_steps(run, log, proc, 3)
        rank1 = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
        assert len(rank1) == 1, (rank1, _children(proc.pid))
        os.kill(rank1[0], signal.SIGKILL)
        t0 = time.monotonic()
        rc = proc.wait(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        kill_job(proc)
    text = log.read_text()
    assert rc != 0, text[-3000:]
    assert elapsed < 60, f"the job took {elapsed:.0f} s to stop"
    assert "| fsdp | bf16 fsdp mixed precision |" in text
    first, ref = read_metrics(run, "train")[0], read_metrics(runs[0]["single"], "train")[0]
    print(f"bf16 FSDP2 step 1: loss {first['loss']:.5f} vs fp32 {ref['loss']:.5f}, "
          f"grad norm {first['grad_norm']:.4f} vs {ref['grad_norm']:.4f}")
    assert first["loss"] == pytest.approx(ref["loss"], abs=0.02)
    assert first["grad_norm"] == pytest.approx(ref["grad_norm"], rel=0.05)
    assert all(np.isfinite(r["loss"]) for r in read_metrics(run, "train"))
    assert re.search(r"Signal 9|SIGKILL|exitcode\s*:\s*-9", text), text[-3000:]  # torchrun names the dead rank


@pytest.mark.slow
def test_hung_rank_times_out_with_clear_error(small_shards, tmp_path):
    """Without torchrun's watchdog (e.g. a peer on another node hangs), train.dist_timeout bounds the wait."""
    run = tmp_path / "run"
    base = {**env(), "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"}
    with socket_port() as port:
        base["MASTER_PORT"] = str(port)
    args = [sys.executable, "-m", "gpt2lab", "train", *LONG, "train.dist_timeout=3", f"data.dir={small_shards}",
            f"train.run_dir={run}"]
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    procs = []
    for r in range(2):
        with open(logs[r], "w") as f:
            procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path,
                                          env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}))
    try:
        _wait_for_train_steps(run, logs[0], procs[0], 3)
        os.kill(procs[1].pid, signal.SIGSTOP)  # alive but silent: no connection is closed
        t0 = time.monotonic()
        rc = procs[0].wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = logs[0].read_text()
    assert rc == 1, text[-3000:]
    assert elapsed < 30, f"rank 0 took {elapsed:.0f} s to give up"
    assert "error: rank 0: lost contact with the other processes" in text and "train.dist_timeout=3s" in text
    assert "Traceback" not in text


def test_parallel_key_is_checked():
    with pytest.raises(UserError, match="train.parallel"):
        load_config(None, ["train.parallel=zero3"])
    with pytest.raises(UserError, match="train.dist_timeout"):
        load_config(None, ["train.dist_timeout=0"])


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_on_every_rank(small_shards, tmp_path):
    """torchrun passes SIGTERM on to its workers: both finish the same step, write one checkpoint
    together, and a single process resumes from it."""
    run, log = tmp_path / "run", tmp_path / "log"
    proc = torchrun(["train", *LONG, "train.log_every=1", f"data.dir={small_shards}", f"train.run_dir={run}"], log,
                    tmp_path)
    try:
        _wait_for_train_steps(run, log, proc, 3)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=90)  # torchrun's own exit code and traceback on a signal are torchrun's
    finally:
        kill_job(proc)
    text = log.read_text()
    stops = re.findall(r"stopped by SIGTERM after step (\d+): checkpoint \S+ written", text)
    assert len(stops) == 1, text[-3000:]  # rank 0 speaks for both
    step = int(stops[0])
    assert [p.name for p in ckpt.list_checkpoints(run)] == [f"step_{step:08d}"]
    assert ckpt.verify_checkpoint(run / "checkpoints" / f"step_{step:08d}")
    state = torch.load(run / "checkpoints" / f"step_{step:08d}" / layout.STATE_FILE, weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # both ranks' RNG: both took part
    summary = train(load_config(None, [*LONG, f"train.max_steps={step + 1}", f"data.dir={small_shards}",
                                       f"train.run_dir={run}"]), resume=True, log=lambda _m: None)
    assert summary["steps"] == step + 1


# --- the speedrun recipe (issue 14): Muon + AdamW in one optimizer, every model switch on ---------
# FSDP2's reduce-scatter rounds gradients differently (about 1e-6 relative); Newton-Schulz in bf16 lifts the small
# singular directions of a matrix by up to ~500x, and AdamW's embedding rate is 10x COMMON's: measured, FSDP2 vs DDP
# 2.5e-3 after 6 steps, and one process against itself with 1e-6 relative noise on every gradient 3.4e-3 (Muon
# matrices) and 2.2e-2 (the embedding). A gathered or kept shard that is wrong moves whole rows by the update.
SPEEDRUN_FSDP_ATOL = 1e-2
SPEEDRUN = ["model.bias=false", "model.rotary=true", "model.qk_norm=true", "model.norm=rmsnorm", "model.mlp=relu2",
            "model.tie_head=false", "model.zero_init_proj=true", "model.logit_softcap=30", "optim.optimizer=muon",
            "optim.embed_lr=0.01", "optim.scalar_lr=0.004", "optim.schedule=wsd", "eval.every=-1",
            "eval.sample_every=-1"]


@pytest.mark.slow
def test_speedrun_ddp_equals_accumulation_and_fsdp_equals_ddp(small_shards, tmp_path):
    """DDP: Muon orthogonalises the same all-reduced gradient on every rank, so 2 processes x 1 micro-batch
    equal 1 x 2 (losses within 1e-4 relative, asked; measured bitwise). FSDP2: Muon gathers each sharded
    matrix's update whole, orthogonalises it on every rank and keeps its shard; it equals DDP up to the
    reduce-scatter's rounding, which Newton-Schulz in bf16 can round differently (a shard shifted by one row
    fails: loss 7e-3 apart). Its sharded checkpoint resumes on one process."""
    args = ["train", *COMMON, *SPEEDRUN, f"data.dir={small_shards}"]
    ddp = torchrun([*args, f"train.run_dir={tmp_path / 'ddp'}"], tmp_path / "ddp.log", tmp_path)
    fsdp = torchrun([*args, f"train.run_dir={tmp_path / 'fsdp'}", "train.parallel=fsdp"], tmp_path / "fsdp.log",
                    tmp_path)
    train(cfg_for(small_shards, tmp_path / "single", *SPEEDRUN), log=lambda _m: None)
    run_ok(ddp, tmp_path / "ddp.log")
    single, two = read_metrics(tmp_path / "single", "train"), read_metrics(tmp_path / "ddp", "train")
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(single, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert single[-1]["loss"] < single[0]["loss"]
    diff = max_diff(weights(tmp_path / "single"), weights(tmp_path / "ddp"))
    print(f"speedrun DDP 2x1 vs 1x2: max abs weight diff {diff:.3g}")
    assert diff <= DDP_ATOL
    assert "| fsdp | fp32 |" in run_ok(fsdp, tmp_path / "fsdp.log")
    sharded = read_metrics(tmp_path / "fsdp", "train")
    diff = max_diff(weights(tmp_path / "ddp"), weights(tmp_path / "fsdp"))
    losses = max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(two, sharded, strict=True))
    print(f"speedrun FSDP2 vs DDP: max abs weight diff {diff:.3g}, max relative loss diff {losses:.3g}")
    assert 0 < diff <= SPEEDRUN_FSDP_ATOL and losses <= 1e-4  # measured 2.5e-3 and 3.4e-6
    # the sharded checkpoint (dcp/) holds both optimizers' states: step 3 resumes on one process to the same end
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", run)
    shutil.rmtree(run / "checkpoints" / f"step_{STEPS:08d}")
    assert (run / "checkpoints" / "step_00000003" / layout.DCP_DIR).is_dir()
    lines = []
    train(cfg_for(small_shards, run, *SPEEDRUN, "train.parallel=fsdp"), resume=True, log=lines.append)
    assert any("resumed from" in line and "(step 3)" in line for line in lines)
    for a, b in zip(sharded, read_metrics(run, "train"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert max_diff(weights(tmp_path / "fsdp"), weights(run)) <= SPEEDRUN_FSDP_ATOL


# --- torchrun's restarts (issue 31, item 5) -------------------------------------------------------

RESTARTED = """
import os, sys, time
import torch
import torch.distributed as dist
from gpt2lab.distributed import init_distributed

rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt == 1 and rank == 0:
    time.sleep(3)  # rank 1 looks for rank 0's address first: it must not find the dead attempt's
info = init_distributed("cpu", 30)
t = torch.ones(1)
dist.all_reduce(t)
if attempt == 0:
    sys.exit(1)  # the first attempt fails after setting up: torchrun starts the group again
print(f"rank {rank} attempt {attempt}: {int(t.item())}", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_restarted_group_reads_none_of_the_dead_attempts_keys(tmp_path):
    """torchrun shares one store across restarts: a restarted group read its dead predecessors' gloo addresses
    ("connectFullMesh ... Connection refused", or a hang past every timeout). Each attempt now has its own keys."""
    script = tmp_path / "restarted.py"
    script.write_text(RESTARTED)
    log = run_ok(torchrun([], tmp_path / "log", tmp_path, entry=("--max-restarts=1", str(script))), tmp_path / "log",
                 timeout=120)
    assert "rank 0 attempt 1: 2" in log and "rank 1 attempt 1: 2" in log


@pytest.mark.slow
def test_group_setup_failure_is_one_line(small_shards, tmp_path):
    """A process group that cannot be set up (here rank 1 never comes) ends in one line within train.dist_timeout,
    not a traceback out of init_distributed."""
    with socket_port() as port:
        pass
    env_0 = {**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": "0",
             "LOCAL_RANK": "0"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "gpt2lab", "train", *LONG, "train.dist_timeout=3",
                        f"data.dir={small_shards}", f"train.run_dir={tmp_path / 'run'}"], capture_output=True,
                       text=True, env=env_0, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and time.monotonic() - t0 < 60, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "rank 0: could not set up the process group" in errors[0], r.stderr[-3000:]
    assert "train.dist_timeout=3s" in errors[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing written, the lock's folder gone with it


@pytest.mark.slow
def test_a_setup_that_hangs_ends_in_one_line(tmp_path):
    """gloo's full mesh can hang past its own timeout: the watchdog ends the process, saying why."""
    script = ("import time\nfrom gpt2lab.distributed import _watchdog\n"
              "with _watchdog(3, 0.1, lambda m: print('told:', m[:20], flush=True)):\n    time.sleep(60)\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=60)
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert r.stdout == "told: rank 3: setting up t\n"
    assert r.stderr.startswith("error: rank 3: setting up the process group did not finish within "
                               "train.dist_timeout=0.1s") and r.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_kill_9_of_a_rank_under_max_restarts_resumes_bit_identical(runs, small_shards, tmp_path):
    """`torchrun --max-restarts=2 ... --resume`: the first start finds no checkpoint and starts from step 0; after
    a kill -9 of rank 1 the group is started again, resumes from the newest checkpoint and ends bit-identical to
    the uninterrupted DDP run."""
    paths, _ = runs
    run, log = tmp_path / "run", tmp_path / "log"
    proc = torchrun(["train", "--resume", *COMMON, f"data.dir={small_shards}", f"train.run_dir={run}"], log, tmp_path,
                    entry=("--max-restarts=2", "-m", "gpt2lab"))
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "step_00000003").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.002)
        rank1 = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        rc = proc.wait(timeout=240)
    finally:
        kill_job(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert re.search(r"--resume: no checkpoint in \S+ yet: starting from step 0", text)
    assert re.search(r"resumed from \S+step_00000003 \(step 3\)", text), text[-3000:]
    assert max_diff(weights(paths["ddp"]), weights(run)) == 0.0
    ref, got = read_metrics(paths["ddp"], "train"), read_metrics(run, "train")
    assert [(r["step"], r["loss"]) for r in got] == [(r["step"], r["loss"]) for r in ref]
    assert json.loads((run / layout.STATUS_FILE).read_text())["state"] == "finished"
