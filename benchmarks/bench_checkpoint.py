"""How long a checkpoint takes to write, verify and restore: does it fit a preemption grace period?

    python benchmarks/bench_checkpoint.py [--preset gpt2] [--dir /tmp] [--repeats 3]

Builds the model with AdamW state (one optimizer step on a short batch), then times
``Checkpointer.save`` (weights, optimizer state, config, checksums, fsync), ``verify_checkpoint``
(the sha256 check every load makes) and ``Checkpointer.restore`` (what ``--resume`` does), with
the size on disk. SIGTERM gives a run the time of one step plus one save before it exits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from gpt2lab import checkpoint as ckpt  # noqa: E402
from gpt2lab.config import load_config  # noqa: E402
from gpt2lab.distributed import DistInfo  # noqa: E402
from gpt2lab.model import GPT  # noqa: E402
from gpt2lab.optim import build_optimizer  # noqa: E402
from harness import describe_machine, log  # noqa: E402


class _Position:
    """The data position a checkpoint stores (what TokenLoader.state_dict gives)."""

    def __init__(self):
        self.state = {"epoch": 0, "sequence": 8, "seq_len": 64, "shuffle": False, "seed": 1337}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (the file system under test)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the figures as JSON")
    a = p.parse_args()
    cfg = load_config(None, [f"model.preset={a.preset}", "train.device=cpu", "train.seq_len=64"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.optim, "cpu")
    x = torch.randint(0, cfg.model.vocab_size, (1, 64))
    model(x, x)[1].backward()
    opt.step()
    root = Path(tempfile.mkdtemp(prefix="gpt2lab-ckpt-", dir=a.dir))
    info, pos = DistInfo(device="cpu"), _Position()
    saver = ckpt.Checkpointer(root / "run", info)
    saves, verifies, restores = [], [], []
    try:
        for i in range(a.repeats):
            t0 = time.perf_counter()
            saver.save(i + 1, model, opt, pos, cfg)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ckpt.verify_checkpoint(saver.last_saved)
            verifies.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            saver.restore(cfg, model, opt, pos, lambda _m: None)
            restores.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in saver.last_saved.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"machine": describe_machine(), "preset": a.preset, "params": model.num_params(), "bytes": size,
              "save_s": min(saves), "verify_s": min(verifies), "restore_s": min(restores), "repeats": a.repeats,
              "dir": a.dir}
    log(f"{a.preset}: {model.num_params():,} params, checkpoint {size / 2**20:,.0f} MiB: save {min(saves):.2f} s, "
        f"verify {min(verifies):.2f} s, restore (verify included) {min(restores):.2f} s (best of {a.repeats})")
    print(json.dumps(result))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
