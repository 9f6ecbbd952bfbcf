"""An adversarial trial of a training run: signals, kills mid-checkpoint, flipped bytes, a full disk.

    python tools/fault_trial.py [--trials 5] [--out trial.md]

Each trial starts the ``micro`` model on tests/data's Shakespeare (fp32, deterministic, one thread,
dropout on, so resuming exactly needs the RNG state too), injects one fault at a random moment,
then runs ``--resume`` to the end and compares the final weights and every step's loss with an
uninterrupted reference run, bit for bit. It prints one markdown table: each fault, how many times,
what happened, whether anything was lost. A full disk needs root (a size-limited tmpfs is mounted).

Many hands on one run (issue 31): a second writer on a training run folder (while the first runs, or
both started at once) and on a ``prepare --out`` folder must be refused in one line while the first
ends bit-identical to a lone run; readers (``sample``, ``eval loss``) beside a run that saves every
step and keeps one checkpoint must all succeed; a rank killed (``kill -9``) under ``torchrun
--max-restarts=2 ... --resume`` must resume and finish bit-identical to an uninterrupted torchrun run,
or fail in one line within ELASTIC_TIMEOUT seconds. Identities: weights flipped with ``checksums.json``
emptied or deleted, and a tokenizer folder's pattern edited, must be refused in one line. ``--only`` picks
faults by their key.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gpt2lab import checkpoint as ckpt  # noqa: E402
from gpt2lab import layout  # noqa: E402
from gpt2lab.data.prepare import prepare, verify  # noqa: E402
from gpt2lab.metrics import read_metrics  # noqa: E402
from gpt2lab.tokenizer import PATTERNS  # noqa: E402

STEPS = 16
ELASTIC_TIMEOUT = 300  # s: a torchrun job with a killed rank finishes or fails within this


def args_for(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpt2lab", "train", "model.preset=micro", "model.dropout=0.1", "train.device=cpu",
            "train.dtype=float32", "train.deterministic=true", "train.threads=1", "train.micro_batch=8",
            "train.seq_len=64", f"train.max_steps={STEPS}", "train.ckpt_every=4", "train.keep_checkpoints=0",
            "train.log_every=1",
            "optim.warmup_steps=2", "optim.lr=1e-3", "eval.every=-1", "eval.sample_every=-1", f"data.dir={data}",
            f"train.run_dir={run}", *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def steps_logged(run: Path) -> int:
    return len(read_metrics(run, "train")) if (run / "metrics.jsonl").is_file() else 0


def wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def final(run: Path) -> tuple[dict, list]:
    last = ckpt.list_checkpoints(run)[-1]
    assert last.name == f"step_{STEPS:08d}", last
    return load_file(str(last / layout.MODEL_FILE)), [r["loss"] for r in read_metrics(run, "train")]


def same(run: Path, ref) -> bool:
    weights, losses = final(run)
    return weights.keys() == ref[0].keys() and all(torch.equal(weights[k], ref[0][k]) for k in weights) \
        and losses == ref[1]


def leftovers(run: Path) -> int:
    return len(list((run / layout.CHECKPOINTS_DIR).glob(".tmp-*"))) if (run / layout.CHECKPOINTS_DIR).is_dir() else 0


def resume(data: Path, run: Path, tmp: Path) -> bool:
    """Continue the run as a user would: --resume, or a fresh start where no checkpoint was completed."""
    again = ["--resume"] if ckpt.list_checkpoints(run) else []
    r = subprocess.run(args_for(data, run, *again), capture_output=True, text=True, cwd=REPO)
    (tmp / "resume.log").write_text(r.stdout + r.stderr)
    return r.returncode == 0


class Trial:
    def __init__(self, data: Path, ref, root: Path):
        self.data, self.ref, self.root, self.n = data, ref, root, 0

    def fresh(self) -> Path:
        self.n += 1
        d = self.root / f"t{self.n}"
        d.mkdir()
        return d

    def signal(self, sig: int, twice: bool = False) -> tuple[str, bool]:
        tmp = self.fresh()
        run = tmp / "run"
        proc = start(args_for(self.data, run), tmp / "log")
        at = random.randint(1, STEPS - 3)
        wait_for(lambda: steps_logged(run) >= at, proc)
        proc.send_signal(sig)
        name = signal.Signals(sig).name
        if twice:
            wait_for(lambda: f"{name} received" in (tmp / "log").read_text(), proc)
            proc.send_signal(sig)
        rc = proc.wait()
        text = (tmp / "log").read_text()
        if twice:
            outcome = "aborted at once" if rc == 128 + sig and "aborted by a second" in text else f"rc {rc}"
        else:
            m = re.search(rf"stopped by {name} after step (\d+)", text)
            outcome = f"checkpoint of its step, exit {rc}" if m and rc == 128 + sig else f"rc {rc}: {text[-300:]}"
        if "Traceback" in text:
            outcome += ", TRACEBACK"
        return outcome, resume(self.data, run, tmp) and same(run, self.ref) and not leftovers(run)

    def kill_in_save(self) -> tuple[str, bool]:
        """SIGKILL while a checkpoint is being written."""
        tmp = self.fresh()
        run = tmp / "run"
        proc = start(args_for(self.data, run), tmp / "log")
        nth = random.randint(1, STEPS // 4 - 1)  # the 1st..3rd checkpoint, while it is being written
        root = run / layout.CHECKPOINTS_DIR
        caught = wait_for(lambda: (root / f".tmp-step_{4 * nth:08d}").exists(), proc)
        proc.kill()
        proc.wait()
        outcome = "killed while writing a checkpoint" if caught else "the save was missed: killed after it"
        ok = resume(self.data, run, tmp)
        if not ok or not same(run, self.ref):
            print(f"kill trial {tmp}: resume ok={ok}", (tmp / "resume.log").read_text()[-1500:], file=sys.stderr)
            return outcome, False
        return outcome, True

    def flip(self, done_run: Path) -> tuple[str, bool]:
        tmp = self.fresh()
        run = tmp / "run"
        shutil.copytree(done_run, run)
        newest = ckpt.list_checkpoints(run)[-1]
        victim = random.choice([p for p in newest.iterdir() if p.is_file()])
        data = bytearray(victim.read_bytes())
        data[random.randrange(len(data))] ^= 1 << random.randrange(8)
        victim.write_bytes(bytes(data))
        r = subprocess.run([sys.executable, "-m", "gpt2lab", "sample", str(newest), "--max-new-tokens", "2",
                            "--device", "cpu"], capture_output=True, text=True, cwd=REPO)
        refused = r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
        ok = resume(self.data, run, tmp)
        skipped = "warning: skipped a damaged checkpoint" in (tmp / "resume.log").read_text()
        outcome = f"{victim.name}: sample {'refused in one line' if refused else 'USED IT'}, resume " \
                  f"{'skipped it' if skipped else 'DID NOT SKIP'}"
        return outcome, ok and refused and skipped and same(run, self.ref)

    def full_disk(self) -> tuple[str, bool]:
        tmp = self.fresh()
        mnt = tmp / "fs"
        mnt.mkdir()
        size = random.randint(30, 100)  # MiB: a micro checkpoint is about 38
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(mnt)], check=True)
        try:
            run = mnt / "run"
            r = subprocess.run(args_for(self.data, run), capture_output=True, text=True, cwd=REPO)
            one_line = r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot write checkpoint" in r.stderr
            left = leftovers(run)
            intact = all(ckpt.verify_checkpoint(p) for p in ckpt.list_checkpoints(run))
            subprocess.run(["mount", "-o", "remount,size=400m", str(mnt)], check=True)
            resumed = resume(self.data, run, tmp)
            outcome = ("one-line error" if one_line else f"rc {r.returncode} {r.stderr[-200:]!r}") + \
                f", {left} partial folder(s) left: {size} MiB"
            return outcome, one_line and not left and intact and resumed and same(run, self.ref)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def refused_in_one_line(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")


def gpt2lab(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2lab", *map(str, args)], capture_output=True, text=True, cwd=REPO)


HOSTILE_PATTERNS = [r"(a+)+$",
                    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\s+(?!\S)|\s+""",  # GPT-2's without digits, punctuation
                    PATTERNS["cl100k"]]  # keeps all text: another tokenizer


def tokenizer_and_its_data(root: Path) -> tuple[Path, Path]:
    """A small trained tokenizer folder and Shakespeare prepared with it (made once per trial run)."""
    from gpt2lab.tokenizer_train import train_tokenizer

    tok, data = root / "tok", root / "tok-data"
    if not tok.exists():
        train_tokenizer([REPO / "tests" / "data" / "tinyshakespeare_head.txt"], 600, tok, log=lambda _m: None)
        prepare([REPO / "tests" / "data" / "tinyshakespeare_head.txt"], data, val_fraction=0.1, workers=1,
                tokenizer=str(tok), log=lambda _m: None)
    return tok, data


def tampered_pattern(trial: Trial) -> tuple[str, bool]:
    """pat_str edited in a tokenizer folder (also its pattern name and recorded identity, at random, as someone
    covering the edit would): training on data made with the folder as it was must be refused in one line."""
    import json

    tok, data = tokenizer_and_its_data(trial.root)
    tmp = trial.fresh()
    edited = shutil.copytree(tok, tmp / "tok")
    meta_path = edited / "gpt2lab-tokenizer.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["pat_str"] = random.choice(HOSTILE_PATTERNS)
    if random.random() < 0.5:
        meta.update(pattern="custom")
        meta.pop("sha256", None)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    r = subprocess.run(args_for(data, tmp / "run", f"data.tokenizer={edited}"), capture_output=True, text=True,
                       cwd=REPO)
    refused = refused_in_one_line(r)
    why = "damaged" if "damaged" in r.stderr else "mismatch" if "tokenizer mismatch" in r.stderr else "?"
    outcome = f"train {'refused in one line (' + why + ')' if refused else f'rc {r.returncode}: USED IT'}"
    return outcome, refused and not (tmp / "run" / layout.CHECKPOINTS_DIR).exists()


def emptied_checksums(trial: Trial, done_run: Path) -> tuple[str, bool]:
    """Bits flipped in the newest checkpoint's weights and its checksums.json emptied or deleted: sample and
    --resume must each be refused in one line naming the command that writes checksums."""
    tmp = trial.fresh()
    run = tmp / "run"
    shutil.copytree(done_run, run)
    newest = ckpt.list_checkpoints(run)[-1]
    weights = newest / layout.MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[random.randrange(len(data))] ^= 1 << random.randrange(8)
    weights.write_bytes(bytes(data))
    how = random.choice(["emptied", "deleted"])
    if how == "emptied":
        (newest / layout.CHECKSUMS_FILE).write_text('{"sha256": {}}')
    else:
        (newest / layout.CHECKSUMS_FILE).unlink()
    sample = gpt2lab("sample", newest, "--max-new-tokens", "2", "--device", "cpu")
    resumed = subprocess.run(args_for(trial.data, run, "--resume"), capture_output=True, text=True, cwd=REPO)
    ok = [refused_in_one_line(r) and "gpt2lab checkpoint checksums" in r.stderr for r in (sample, resumed)]
    outcome = f"sample {'refused in one line' if ok[0] else 'USED IT'}, resume " \
              f"{'refused in one line' if ok[1] else 'USED IT'} ({how})"
    return outcome, all(ok)
def one_line(stderr: str) -> bool:
    """A user's error as gpt2lab gives it: one ``error:`` line, no traceback."""
    lines = stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr


def status_of(run: Path) -> str:
    path = run / layout.STATUS_FILE
    return json.loads(path.read_text()).get("state", "?") if path.is_file() else "no status"


def rank_pids(pid: int) -> dict[int, int]:
    """torchrun's workers: {rank: pid}, found through /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(stat.parent.name)
    return found


def torchrun(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
            *args_for(data, run)[1:], "--resume"]


class ManyHands:
    """Issue 31's faults: two writers on one folder, readers racing retention, a rank killed under torchrun's
    restarts."""

    def __init__(self, trial: Trial):
        self.trial, self.data, self.ref = trial, trial.data, trial.ref
        self._corpus: Path | None = None
        self._lone: dict | None = None
        self._dist_ref = None

    def run_writers(self) -> tuple[str, bool]:
        """A second `train` on a run folder: while the first is paused at a random step, or both started at once."""
        tmp = self.trial.fresh()
        run = tmp / "run"
        if random.random() < 0.5:
            procs = [start(args_for(self.data, run), tmp / f"log{i}") for i in range(2)]
            rcs = [p.wait() for p in procs]
            texts = [(tmp / f"log{i}").read_text() for i in range(2)]
            refused = sorted(rcs) == [0, 2] and one_line(texts[rcs.index(2)])
            outcome = "started together: one refused in one line" if refused else f"started together: rc {rcs}"
            return outcome, refused and same(run, self.ref) and status_of(run) == "finished"
        first = start(args_for(self.data, run), tmp / "log")
        at = random.randint(1, STEPS - 2)
        wait_for(lambda: steps_logged(run) >= at, first)
        first.send_signal(signal.SIGSTOP)  # the second runs while the first is in the middle of its run
        extra = random.choice([["--resume"], []])
        second = subprocess.run(args_for(self.data, run, *extra), capture_output=True, text=True, cwd=REPO)
        first.send_signal(signal.SIGCONT)
        rc = first.wait()
        refused = second.returncode == 2 and one_line(second.stderr) and f"pid {first.pid} " in second.stderr
        outcome = (f"during the run{' with --resume' if extra else ''}: "
                   + ("refused in one line" if refused else f"rc {second.returncode} {second.stderr[-200:]!r}"))
        return outcome, refused and rc == 0 and same(run, self.ref) and status_of(run) == "finished"

    def _prepare(self, out: Path) -> list[str]:
        if self._corpus is None:
            sys.path.insert(0, str(REPO / "tests"))
            from cli_helpers import write_wiki_jsonl

            self._corpus = write_wiki_jsonl(self.trial.root / "wiki.jsonl", 8000)
        return [sys.executable, "-m", "gpt2lab", "prepare", str(self._corpus), "--out", str(out), "--shard-tokens",
                "500000", "--workers", "1"]

    def prepare_writers(self) -> tuple[str, bool]:
        """The same `prepare --out X` twice, the second 0-0.8 s after the first. Whichever takes the folder's lock
        first writes; the other must be refused in one line ("in use"), or, when the first had ended before the
        second reached the lock, find nothing to do. Either way the output must equal a lone run's."""
        if self._lone is None:
            lone = self.trial.root / "lone-prepare"
            subprocess.run(self._prepare(lone), check=True, capture_output=True, cwd=REPO)
            self._lone = files_of(lone)
        out = self.trial.fresh() / "out"
        first = subprocess.Popen(self._prepare(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=REPO)
        time.sleep(random.uniform(0, 0.8))
        ended_before = first.poll() is not None
        second = subprocess.run(self._prepare(out), capture_output=True, text=True, cwd=REPO)
        first_out, first_err = first.communicate()
        runs = {"first": (first.returncode, first_out, first_err),
                "second": (second.returncode, second.stdout, second.stderr)}
        in_use = [k for k, (rc, _, err) in runs.items() if rc == 2 and one_line(err) and "is in use" in err]
        wrote = [k for k, (rc, _, _) in runs.items() if rc == 0]
        if len(in_use) == 1 and len(wrote) == 1:
            outcome, ok = f"{in_use[0]} refused in one line (in use)", True
        elif wrote == ["first", "second"] and "nothing to do" in second.stdout + second.stderr:
            # the second reached the lock after the first had finished and released it
            when = "started after the first ended" if ended_before else "locked after the first ended"
            outcome, ok = f"second {when}: nothing to do", True
        else:
            outcome, ok = "not one writer: " + "; ".join(f"{k} rc {rc} {err[-160:]!r}"
                                                          for k, (rc, _, err) in runs.items()), False
        try:
            verify(out)
            intact = files_of(out) == self._lone
        except Exception:  # noqa: BLE001 (any failure to verify is the outcome)
            intact = False
        return outcome + ("" if intact else ", OUTPUT DIFFERS"), ok and intact

    def readers(self) -> tuple[str, bool]:
        """8 `sample`/`eval loss` calls on a run that saves every step and keeps one checkpoint."""
        tmp = self.trial.fresh()
        run = tmp / "run"
        # small steps: a checkpoint replaces the last one about as often as a reader loads one
        proc = start(args_for(self.data, run, "train.max_steps=5000", "train.ckpt_every=1", "train.keep_checkpoints=1",
                              "train.micro_batch=2", "train.seq_len=32"), tmp / "log")
        wait_for(lambda: bool(ckpt.list_checkpoints(run)), proc)
        failed = []
        for i in range(8):
            cmd = ["sample", run, "--max-new-tokens", "2"] if i % 2 == 0 else ["eval", "loss", run, "--tokens", "1024"]
            r = subprocess.run([sys.executable, "-m", "gpt2lab", *map(str, cmd), "--device", "cpu"],
                               capture_output=True, text=True, cwd=REPO)
            if r.returncode:
                failed.append(r.stderr.strip().splitlines()[-1][:120] if r.stderr.strip() else f"rc {r.returncode}")
        racing = proc.poll() is None
        proc.terminate()
        proc.wait()
        outcome = f"{8 - len(failed)} of 8 reads ok" + ("" if racing else " (the run ended first)") + \
            "".join(f": {f}" for f in failed[:1])
        return outcome, racing and not failed

    def _elastic_ref(self):
        if self._dist_ref is None:
            run = self.trial.root / "ref-torchrun"
            subprocess.run(torchrun(self.data, run), check=True, capture_output=True, cwd=REPO)
            self._dist_ref = final(run)
        return self._dist_ref

    def elastic(self) -> tuple[str, bool]:
        """kill -9 of a random rank 0.5-2.5 s after a random checkpoint, under --max-restarts=2."""
        ref = self._elastic_ref()
        tmp = self.trial.fresh()
        run = tmp / "run"
        proc = start(torchrun(self.data, run, "--max-restarts=2"), tmp / "log")
        nth = random.randint(1, STEPS // 4 - 1)
        wait_for(lambda: len(ckpt.list_checkpoints(run)) >= nth, proc)
        time.sleep(random.uniform(0.5, 2.5))
        rank = random.randint(0, 1)
        victim = rank_pids(proc.pid).get(rank)
        if victim:
            os.kill(victim, signal.SIGKILL)
        try:
            rc = proc.wait(timeout=ELASTIC_TIMEOUT)
        except subprocess.TimeoutExpired:
            for pid in rank_pids(proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            return f"HUNG past {ELASTIC_TIMEOUT} s (status {status_of(run)})", False
        text = (tmp / "log").read_text()
        killed = f"rank {rank} killed" if victim else "ended before the kill"
        if rc == 0:
            ok = same(run, ref) and status_of(run) == "finished"
            return f"{killed}, resumed and finished{'' if ok else ', DIFFERS'}", ok
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        clean = bool(errors) and not re.search(r'File ".*gpt2lab/', text)
        return f"{killed}, failed {'in one line' if clean else 'with a TRACEBACK'} (status {status_of(run)})", clean


def files_of(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5, help="trials of each fault")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table to this markdown file")
    p.add_argument("--only", help="comma-separated keys of the faults to run: sigterm, sigint, twice, kill-save, "
                   "flip, disk, run-writers, prepare-writers, readers, elastic, checksums, pattern")
    a = p.parse_args()
    random.seed(a.seed)
    root = Path(tempfile.mkdtemp(prefix="gpt2lab-trial-"))
    data = root / "data"
    prepare([REPO / "tests" / "data" / "tinyshakespeare_head.txt"], data, val_fraction=0.1, workers=1,
            log=lambda _m: None)
    ref_run = root / "ref"
    subprocess.run(args_for(data, ref_run), check=True, capture_output=True, cwd=REPO)
    ref = final(ref_run)
    done8 = root / "done8"  # the reference as it was after step 8 (checkpoints 4 and 8), for the flipped bytes
    shutil.copytree(ref_run, done8)
    for later in ckpt.list_checkpoints(done8)[2:]:
        shutil.rmtree(later)
    trial = Trial(data, ref, root)
    hands = ManyHands(trial)
    faults = [("sigterm", "SIGTERM at a random step", lambda: trial.signal(signal.SIGTERM)),
              ("sigint", "SIGINT at a random step", lambda: trial.signal(signal.SIGINT)),
              ("twice", "a second SIGTERM while stopping", lambda: trial.signal(signal.SIGTERM, twice=True)),
              ("kill-save", "SIGKILL while a checkpoint is written", trial.kill_in_save),
              ("flip", "one bit flipped in a file of the newest checkpoint", lambda: trial.flip(done8)),
              ("run-writers", "two writers on one run folder", hands.run_writers),
              ("prepare-writers", "two writers on one prepare folder", hands.prepare_writers),
              ("readers", "readers racing retention (ckpt_every=1, keep_checkpoints=1)", hands.readers),
              ("elastic", "kill -9 of one rank under torchrun --max-restarts=2", hands.elastic),
              ("checksums", "weights flipped, checksums.json emptied or deleted",
               lambda: emptied_checksums(trial, done8))]
    if importlib.util.find_spec("tokenizers"):  # to train the tokenizer whose folder is edited
        faults.append(("pattern", "a tokenizer folder's pattern edited", lambda: tampered_pattern(trial)))
    if os.geteuid() == 0 and shutil.which("mount"):
        faults.append(("disk", "disk full (tmpfs of 30-100 MiB)", trial.full_disk))
    if a.only:
        faults = [f for f in faults if f[0] in a.only.split(",")]
    rows = ["| fault | trials | outcomes | resumed bit-identical, nothing lost |", "|---|---|---|---|"]
    failed = 0
    for _key, name, fn in faults:
        results = []
        for _ in range(a.trials):
            results.append(fn())
            if not results[-1][1]:
                failed += 1
                print(f"failed: {name}, trial folder {root}/t{trial.n}: {results[-1][0]}", flush=True)
        kinds = collections.Counter(o.split(":")[0] if "bit flipped" not in name and "writers" not in name else o
                                    for o, _ in results)
        told = "; ".join(f"{k} ({n})" for k, n in sorted(kinds.items()))
        rows.append(f"| {name} | {len(results)} | {told} | {sum(ok for _, ok in results)} of {len(results)} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    if a.out:
        Path(a.out).write_text(table + "\n")
    if failed:
        print(f"\n{failed} trial(s) failed; their folders are kept for a look in {root} (t1, t2, ... in trial order)")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
