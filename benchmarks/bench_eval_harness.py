"""`gpt2lab eval harness` speed: lm-evaluation-harness's HellaSwag through gpt2lab's backend
(GPT2LabLM: packed scorer) against the harness's own ``hf`` backend, same weights, same run.

    .venv/bin/python benchmarks/bench_eval_harness.py                 # 124M, 200 items
    .venv/bin/python benchmarks/bench_eval_harness.py --items 40 --preset mini

The model is the ``--preset`` GPT with random weights (seed 0), exported once with
``convert to-hf`` for the ``hf`` backend. The task is the harness's own ``hellaswag`` definition
(its YAML included) on the first ``--items`` of the local validation file (official schema; the
context split at its last sentence end into ``ctx_a``/``ctx_b``). Each case runs ``--repeat``
times, round-robin; the fastest counts. items/s = items / seconds of ``simple_evaluate``
(dataset loading included, the same for both). The script also checks that the float32 cases
give the same ``acc`` and ``acc_norm``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

import harness
from gpt2lab.config import MODEL_PRESETS
from gpt2lab.device import autocast_for
from gpt2lab.evals.harness import GPT2LabLM, write_local_task
from gpt2lab.hf import save_hf
from gpt2lab.model import GPT, GPTConfig


def local_task(folder: Path, items: int, data: Path) -> str:
    rows = []
    for line in data.read_text().splitlines()[:items]:
        it = json.loads(line)
        a, dot, b = it["ctx"].rpartition(". ")
        rows.append(json.dumps(dict(it, ctx_a=a + "." if dot else it["ctx"], ctx_b=b if dot else "")))
    (folder / "hs.jsonl").write_text("\n".join(rows) + "\n")
    write_local_task(folder, "hs_bench", "hellaswag/hellaswag.yaml", "validation", folder / "hs.jsonl",
                     training_split=None, metric_list=[{"metric": m} for m in ("acc", "acc_norm", "acc_bytes")])
    return "hs_bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--hf-batch", type=int, default=16, help="batch_size of the hf backend")
    ap.add_argument("--data", default=str(harness.data_dir() / "hellaswag" / "hellaswag_val.jsonl"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    machine = harness.start("cpu")
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL_PRESETS[args.preset])).eval()
    tmp = Path(tempfile.mkdtemp())
    save_hf(model, tmp / "hf")
    task = local_task(tmp, args.items, Path(args.data))
    manager = TaskManager(include_path=str(tmp))
    bf16 = autocast_for("cpu", torch.bfloat16)
    cases = {
        f"hf fp32 (batch {args.hf_batch})": lambda: dict(
            model="hf", device="cpu", batch_size=args.hf_batch,
            model_args={"pretrained": str(tmp / "hf"), "dtype": "float32"}),
        f"hf bf16 (batch {args.hf_batch})": lambda: dict(
            model="hf", device="cpu", batch_size=args.hf_batch,
            model_args={"pretrained": str(tmp / "hf"), "dtype": "bfloat16"}),
        "gpt2lab fp32": lambda: dict(model=GPT2LabLM(model)),
        "gpt2lab bf16 autocast": lambda: dict(model=GPT2LabLM(model, autocast=bf16)),
    }
    best: dict[str, float] = {}
    scores: dict[str, dict] = {}
    samples: dict[str, list] = {}
    for _ in range(args.repeat):
        for name, kw in cases.items():
            sec, out = harness.timed(lambda: simple_evaluate(tasks=[task], task_manager=manager, log_samples=True,
                                                             **kw()), "cpu")
            best[name] = min(best.get(name, float("inf")), sec)
            scores[name] = {k: v for k, v in out["results"][task].items() if k.startswith("acc") and "stderr" not in k}
            samples[name] = sorted(out["samples"][task], key=lambda d: d["doc_id"])
    base = best[f"hf fp32 (batch {args.hf_batch})"]
    print(f"{args.preset} ({model.num_params() / 1e6:.0f}M, random init) | harness hellaswag, {args.items} items | "
          f"best of {args.repeat}")
    for name, sec in best.items():
        print(f"{name:>24}  {sec:7.2f} s  {args.items / sec:7.2f} items/s  {base / sec:5.2f}x hf fp32  {scores[name]}")
    same = scores["gpt2lab fp32"] == scores[f"hf fp32 (batch {args.hf_batch})"]
    a, b = samples[f"hf fp32 (batch {args.hf_batch})"], samples["gpt2lab fp32"]
    differ = {m: sum(x[m] != y[m] for x, y in zip(a, b)) for m in ("acc", "acc_norm", "acc_bytes")}
    ll_diff = max(abs(float(p[0]) - float(q[0])) for x, y in zip(a, b)
                  for p, q in zip(x["filtered_resps"], y["filtered_resps"]))
    print(f"fp32, hf backend vs gpt2lab backend: scores equal {same}; items that differ {differ}; "
          f"largest |log-likelihood difference| {ll_diff:.2e}")
    harness.write_results(args.out or harness.default_out("eval-harness"), machine, {
        "preset": args.preset, "items": args.items, "seconds": best,
        "items_per_s": {k: args.items / v for k, v in best.items()},
        "scores": scores, "fp32_equal": same, "fp32_items_differ": differ, "fp32_max_ll_diff": ll_diff})


if __name__ == "__main__":
    main()
