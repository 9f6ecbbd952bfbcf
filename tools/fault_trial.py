"""An adversarial trial of a training run: signals, kills mid-checkpoint, flipped bytes, a full disk.

    python tools/fault_trial.py [--trials 5] [--out trial.md]

Each trial starts the ``micro`` model on tests/data's Shakespeare (fp32, deterministic, one thread,
dropout on, so resuming exactly needs the RNG state too), injects one fault at a random moment,
then runs ``--resume`` to the end and compares the final weights and every step's loss with an
uninterrupted reference run, bit for bit. It prints one markdown table: each fault, how many times,
what happened, whether anything was lost. A full disk needs root (a size-limited tmpfs is mounted).
"""

from __future__ import annotations

import argparse
import importlib.util
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
from gpt2lab.data.prepare import prepare  # noqa: E402
from gpt2lab.metrics import read_metrics  # noqa: E402
from gpt2lab.tokenizer import PATTERNS  # noqa: E402

STEPS = 16


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5, help="trials of each fault")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table to this markdown file")
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
    faults = [("SIGTERM at a random step", lambda: trial.signal(signal.SIGTERM)),
              ("SIGINT at a random step", lambda: trial.signal(signal.SIGINT)),
              ("a second SIGTERM while stopping", lambda: trial.signal(signal.SIGTERM, twice=True)),
              ("SIGKILL while a checkpoint is written", trial.kill_in_save),
              ("one bit flipped in a file of the newest checkpoint", lambda: trial.flip(done8))]
    if importlib.util.find_spec("tokenizers"):  # to train the tokenizer whose folder is edited
        faults.append(("a tokenizer folder's pattern edited", lambda: tampered_pattern(trial)))
    faults.append(("weights flipped, checksums.json emptied or deleted", lambda: emptied_checksums(trial, done8)))
    if os.geteuid() == 0 and shutil.which("mount"):
        faults.append(("disk full (tmpfs of 30-100 MiB)", trial.full_disk))
    rows = ["| fault | trials | outcomes | resumed bit-identical, nothing lost |", "|---|---|---|---|"]
    for name, fn in faults:
        results = [fn() for _ in range(a.trials)]
        kinds = sorted({o.split(":")[0] if "bit flipped" not in name else o for o, _ in results})
        rows.append(f"| {name} | {len(results)} | {'; '.join(kinds)} | {sum(ok for _, ok in results)} of "
                    f"{len(results)} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    if a.out:
        Path(a.out).write_text(table + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
