#!/usr/bin/env bash
# The CUDA paths in one short run, for a GPU machine: training on cuda (bf16 autocast, TF32,
# torch.compile, fused AdamW, flash attention through SDPA) with every evaluator, resume, sample,
# the three evals, decoder and packed-scorer agreement on the GPU, and `gpt2lab bench` on gpt2.
# Usage: bash tools/gpu_check.sh [OUT_DIR]   (PY=python3 by default; about 4 minutes on an H200)
# DEVICE=cpu BENCH_PRESET=none runs the same steps on a CPU (no bench), to check the script itself.
set -euo pipefail
OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BENCH_PRESET=${BENCH_PRESET:-gpt2}
mkdir -p "$OUT_DIR"
W=$(mktemp -d)
g() { echo "+ gpt2lab $*"; "$PY" -m gpt2lab "$@"; }
if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"

HS=tests/data/hellaswag_val_120.jsonl
LA=tests/data/lambada_test_plain_text_head.txt
g prepare gpt2lab/assets/tinyshakespeare.txt.gz --out "$W/data"
common=(model.preset=micro "data.dir=$W/data" "train.run_dir=$W/run" "train.device=$DEVICE" train.micro_batch=8
        train.seq_len=128 train.compile=true eval.every=10 eval.val_tokens=8192 "eval.hellaswag_data=$HS"
        eval.hellaswag_items=40 eval.hellaswag_every=20 "eval.lambada_data=$LA" eval.lambada_items=40
        eval.lambada_every=20 eval.sample_tokens=16 eval.sample_every=20 optim.warmup_steps=5)
g train "${common[@]}" train.max_steps=20 train.ckpt_every=10
g train "${common[@]}" train.max_steps=30 --resume
g sample "$W/run" --device "$DEVICE" --prompt "ROMEO:" --max-new-tokens 24 --seed 1
g eval loss "$W/run" --device "$DEVICE"
g eval hellaswag "$W/run" --data "$HS" --device "$DEVICE" --out "$W/evals"
g eval lambada "$W/run" --data "$LA" --device "$DEVICE" --out "$W/evals"
g report "$W/run"

# the decoder (KV cache, compiled step) and the packed scorer against their references, on the GPU
"$PY" - "$W/run" "$HS" "$DEVICE" <<'PY'
import sys, json, torch
from gpt2lab.weights import load_pretrained
from gpt2lab.generate import Decoder, generate
from gpt2lab.evals.hellaswag import evaluate_hellaswag
device = sys.argv[3]
model = load_pretrained(sys.argv[1], device)
prompts = [[464, 3290, 318], [40, 716, 257, 1913, 2746, 11]]
ref = [generate(model, p, 40, temperature=0.0, use_cache=False)[0] for p in prompts]
assert generate(model, prompts, 40, temperature=0.0) == ref, "cached decoding differs from uncached"
dec = Decoder(model, compile=True)
assert [generate(dec, p, 40, temperature=0.0)[0] for p in prompts] == ref, "compiled decoder differs"
items = [json.loads(l) for l in open(sys.argv[2])][:60]
fast, rf = evaluate_hellaswag(model, items, device)
plain, rp = evaluate_hellaswag(model, items, device, plain=True)
assert fast == plain or all(abs(fast[k] - plain[k]) < 1e-9 for k in fast if k != "items"), (fast, plain)
print(f"{device} agreement ok: decoder (eager, compiled) == uncached; packed scorer == plain", fast)
PY
# lm-evaluation-harness with gpt2lab as its model, where lm-eval is installed (a local HellaSwag task)
if "$PY" -c "import lm_eval" 2>/dev/null; then
  "$PY" - "$HS" "$W" <<'PY'
import json, sys
from pathlib import Path
from gpt2lab.evals.harness import write_local_task
src, w = sys.argv[1], Path(sys.argv[2])
rows = [dict(json.loads(line), ctx_b="") for line in open(src)][:40]
(w / "hs.jsonl").write_text("".join(json.dumps(dict(r, ctx_a=r["ctx"])) + "\n" for r in rows))
write_local_task(w / "tasks", "hs_local", "hellaswag/hellaswag.yaml", "validation", w / "hs.jsonl", training_split=None)
PY
  g eval harness "$W/run" --tasks hs_local --include-path "$W/tasks" --device "$DEVICE" --out "$W/evals"
else
  echo "lm-eval not installed: eval harness skipped"
fi
if [ "$BENCH_PRESET" != none ]; then
  g bench --preset "$BENCH_PRESET" -B 16 -T 1024 --compile both --device "$DEVICE" --steps 10 --warmup 3 |
    tee "$OUT_DIR/bench_$BENCH_PRESET.txt"
fi
echo "check passed on $DEVICE"
