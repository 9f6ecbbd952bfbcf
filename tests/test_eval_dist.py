"""Evaluations under torchrun: 2 gloo processes give what 1 process gives, whatever the batch size."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from gpt2lab.checkpoint import load_model, save_checkpoint
from gpt2lab.config import from_dict
from gpt2lab.evals.hellaswag import evaluate_hellaswag, load_hellaswag, select_items
from gpt2lab.evals.lambada import evaluate_lambada, load_lambada
from gpt2lab.evals.loss import eval_windows, evaluate_loss
from gpt2lab.model import GPT

pytestmark = pytest.mark.slow  # torchrun with 2 gloo processes

SEQ, WINDOWS = 32, 63  # an odd number of windows: the ranks get 32 and 31

WORKER = """
import json, sys
from gpt2lab.checkpoint import load_model
from gpt2lab.distributed import init_distributed, shutdown
from gpt2lab.evals.hellaswag import evaluate_hellaswag, load_hellaswag
from gpt2lab.evals.lambada import evaluate_lambada, load_lambada
from gpt2lab.evals.loss import eval_windows, evaluate_loss

ckpt, shards, hs, lam, out, seq, n = sys.argv[1:]
info = init_distributed("cpu")
model, _ = load_model(ckpt)
loss = evaluate_loss(model, eval_windows(shards, "val", int(seq), int(seq) * int(n)), 3, "cpu", None, info)
hs_m, hs_r = evaluate_hellaswag(model, load_hellaswag(hs), "cpu", None, info, batch_tokens=700)
lam_m, lam_r = evaluate_lambada(model, load_lambada(lam, "original"), "cpu", None, info, batch_tokens=300)
if info.is_main:
    with open(out, "w") as f:
        json.dump({"world": info.world_size, "loss": loss, "hs": [hs_m, hs_r], "lam": [lam_m, lam_r]}, f)
shutdown(info)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_data, small_shards):
    tmp = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    cfg = from_dict({"model": {"preset": "micro"}})
    save_checkpoint(tmp / "run", 1, GPT(cfg.model), cfg, {})
    hs = tmp / "hs.jsonl"
    items = select_items(load_hellaswag(small_data / "hellaswag_val_120.jsonl"), 15)
    hs.write_text("".join(json.dumps(it) + "\n" for it in items))
    lam = tmp / "lambada.txt"
    lam.write_text("\n".join((small_data / "lambada_test_plain_text_head.txt").read_text().splitlines()[:15]) + "\n")
    return tmp, hs, lam, small_shards


def test_two_processes_match_one(setup):
    tmp, hs, lam, shards = setup
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    out = tmp / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(worker), str(tmp / "run"), str(shards), str(hs), str(lam), str(out), str(SEQ),
                        str(WINDOWS)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    two = json.loads(out.read_text())
    assert two["world"] == 2

    model, _ = load_model(tmp / "run")
    windows = eval_windows(shards, "val", SEQ, SEQ * WINDOWS)
    assert len(windows) == WINDOWS
    # one process, another micro-batch size: the same mean over the same tokens
    for batch in (5, WINDOWS):
        assert math.isclose(evaluate_loss(model, windows, batch, "cpu"), two["loss"], rel_tol=1e-6, abs_tol=1e-6)

    hs_m, hs_r = evaluate_hellaswag(model, load_hellaswag(hs))
    assert two["hs"][0] == hs_m and hs_m["items"] == 15
    assert [r_["index"] for r_ in two["hs"][1]] == list(range(15))
    for a, b in zip(two["hs"][1], hs_r):
        assert a["label"] == b["label"] and a["completion"]["pred_mean"] == b["completion"]["pred_mean"]
        assert max(abs(x - y) for x, y in zip(a["completion"]["logprob"], b["completion"]["logprob"])) < 1e-4

    lam_m, lam_r = evaluate_lambada(model, load_lambada(lam, "original"))
    assert two["lam"][0]["items"] == lam_m["items"] == 15 and two["lam"][0]["acc"] == lam_m["acc"]
    assert math.isclose(two["lam"][0]["ppl"], lam_m["ppl"], rel_tol=1e-5)
    assert [r_["index"] for r_ in two["lam"][1]] == list(range(15))
