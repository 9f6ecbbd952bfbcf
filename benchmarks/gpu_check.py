"""One prepared check of a machine with one CUDA GPU, in under 8 minutes, printing one table.

    python benchmarks/gpu_check.py                 # on the GPU machine; JSON and the table go to --out
    python benchmarks/gpu_check.py --dry           # the same code paths on the CPU with `micro` (CI runs this)

What it runs, in order, each stage a part of the table:

1. the GPU tests, ``pytest -m cuda`` (tests/test_cuda.py): a bf16 step against the CPU fp32 step,
   compile, SDPA flash, exact checkpoint resume, FSDP2 on one GPU, generation with and without
   compile, HellaSwag predictions against CPU fp32, the command line end to end;
2. training throughput of ``gpt2`` (124M) compiled at micro-batch 16, 32 and 64 x 1024: tokens/s,
   MFU against the bf16 matmul peak measured in this run and against the GPU's datasheet peak,
   peak memory; each beside transformers' GPT2LMHeadModel of the same shape, same step;
3. the ``speedrun`` recipe (configs/speedrun.yaml: Muon, rotary, QK-norm, ReLU^2, ...) at 124M
   against the GPT-2 recipe at the same micro-batch;
4. the time to score all 10,042 HellaSwag items with a 124M model (random weights: the time is
   the point, not the accuracy), from $GPT2LAB_DATA/hellaswag/hellaswag_val.jsonl.

A stage that fails becomes a failed row and the check goes on; the exit status is 1 if any row
failed. ``--budget-s`` skips what is left of stages 2-4 once that much time has gone, so the
whole check ends inside a short lease of the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import harness
from gpt2lab.bench import bench_train
from gpt2lab.bench_table import add_peer_ratios
from gpt2lab.perf import measure_peaks
from gpt2lab.progress import fmt_bytes

ROOT = Path(__file__).resolve().parent.parent
# (preset, micro-batches, seq_len, timed steps, warm-up steps, compile, matmul sizes for the peak, hellaswag items)
FULL = ("gpt2", (16, 32, 64), 1024, 10, 3, True, None, 0)
DRY = ("micro", (2, 4), 64, 2, 1, False, (256,), 40)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true",
                   help="run the same code paths on the CPU with the micro preset and tiny shapes (for CI)")
    p.add_argument("--device", default=None, help="default cuda (cpu with --dry)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                   help="folder for gpu_check.json, gpu_check.md and the tests' junit XML (default $OUT)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="after this many seconds, skip the throughput and HellaSwag cases left (default 420)")
    p.add_argument("--pytest-args", default="",
                   help="extra arguments for the GPU tests, e.g. \"-k flash\" (default: all of them)")
    p.add_argument("--stages", default="tests,throughput,hellaswag",
                   help="which stages to run, comma-separated (default all: tests,throughput,hellaswag)")
    p.add_argument("--hellaswag", default=None,
                   help="HellaSwag val jsonl (default $GPT2LAB_DATA/hellaswag/hellaswag_val.jsonl; "
                   "with --dry tests/data/hellaswag_val_120.jsonl)")
    return p.parse_args(argv)


class Check:
    """The rows of the table and the wall-clock budget."""

    def __init__(self, budget_s: float):
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, stage: str, case: str, result: str, figures: str = "", seconds: float = 0.0, **data) -> dict:
        figures = " / ".join(line.strip() for line in figures.splitlines() if line.strip())  # one table row
        row = {"stage": stage, "case": case, "result": result, "figures": figures, "seconds": seconds, **data}
        self.rows.append(row)
        harness.log(f"[{self.elapsed():6.1f} s] {stage} | {case} | {result} | {figures}")
        return row

    def over_budget(self, stage: str, case: str) -> bool:
        if self.elapsed() < self.budget_s:
            return False
        self.add(stage, case, "skipped", f"time budget of {self.budget_s:.0f} s spent")
        return True

    def run(self, stage: str, case: str, fn):
        """``fn()`` timed; an exception becomes a failed row (its last line) and None."""
        t = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # one broken case must not hide the rest of the table
            traceback.print_exc()
            last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            self.add(stage, case, "FAILED", f"{type(e).__name__}: {last[:160]}", time.perf_counter() - t)
            return None


def run_tests(check: Check, out: Path, extra: str, timeout_s: float = 300) -> None:
    """pytest -m cuda in a subprocess; one row per test from its junit XML."""
    xml = out / "cuda_tests.xml"
    # only the file that holds them: collecting the whole suite would need every dev extra (lm-eval, ...)
    cmd = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-m", "cuda", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *extra.split()]
    harness.log("+ " + " ".join(cmd))
    t = time.perf_counter()
    # cuBLAS is deterministic (train.deterministic) only with this set before its first use in the process
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        (out / "cuda_tests.log").write_text(text)
        check.add("tests", "pytest -m cuda", "FAILED", f"still running after {timeout_s:.0f} s: stopped",
                  time.perf_counter() - t)
        return
    (out / "cuda_tests.log").write_text(proc.stdout + proc.stderr)
    if not xml.is_file():
        check.add("tests", "pytest -m cuda", "FAILED", (proc.stdout + proc.stderr).strip()[-160:],
                  time.perf_counter() - t)
        return
    cases = ET.parse(xml).getroot().iter("testcase")
    n = 0
    for case in cases:
        n += 1
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            result, figures = "FAILED", (bad.get("message") or "").splitlines()[0][:160] if bad.get("message") else ""
        elif skipped is not None:
            result, figures = "skipped", (skipped.get("message") or "")[:160]
        else:
            result, figures = "passed", ""
        check.add("tests", case.get("name", "?"), result, figures, float(case.get("time", 0)))
    if n == 0 or proc.returncode not in (0, 1):
        check.add("tests", "pytest -m cuda", "FAILED", f"exit {proc.returncode}: " + proc.stdout.strip()[-120:],
                  time.perf_counter() - t)


def throughput_row(check: Check, stage: str, r: dict) -> None:
    sheet = f", {100 * r['mfu_datasheet']:.1f}% of datasheet" if "mfu_datasheet" in r else ""
    vs = f", {r['vs_peer']:.2f}x {r['peer_name']}" if "vs_peer" in r else ""
    check.add(stage, f"{r['model']} {r['preset']} B={r['batch']} T={r['seq_len']}"
              f"{' compiled' if r['compile'] else ''}", "ok",
              f"{r['tokens_per_s']:,.0f} tok/s, MFU {100 * r['mfu']:.1f}% of measured bf16 peak{sheet}, "
              f"peak mem {fmt_bytes(r['peak_mem_bytes'])}{vs}", r["warmup_s"] + r["ms_per_step"] * r["steps"] / 1000,
              figures_json=r)


def run_throughput(check: Check, device: str, plan: tuple, peaks: dict) -> None:
    preset, batches, seq_len, steps, warmup, compiled, _sizes, _items = plan
    results = {}

    def case(stage, batch, peer="gpt2lab", recipe=None):
        name = f"{peer}{' speedrun' if recipe else ''} {preset} B={batch}"
        if check.over_budget(stage, name):
            return None
        r = check.run(stage, name, lambda: bench_train(preset, batch=batch, seq_len=seq_len, dtype="bfloat16",
                                                       compile=compiled, steps=steps, warmup=warmup, device=device,
                                                       peer=peer, recipe=recipe, peaks=peaks, log=harness.log))
        if r is not None:
            results[(peer, recipe, batch)] = r
        return r

    def pair(batch):  # ours and the peer side by side
        ours, peer = case("throughput", batch), case("throughput", batch, "hf")
        if ours is not None and peer is not None:
            add_peer_ratios([ours, peer])
        for r in (ours, peer):
            if r is not None:
                throughput_row(check, "throughput", r)

    # The smallest size first, with the speedrun recipe beside it: what the budget cuts is the larger sizes.
    pair(batches[0])
    sr = case("speedrun", batches[0], recipe=str(ROOT / "configs" / "speedrun.yaml"))
    if sr is not None:
        base = results.get(("gpt2lab", None, batches[0]))
        throughput_row(check, "speedrun", sr)
        if base is not None:
            check.add("speedrun", f"speedrun / GPT-2 recipe tok/s at B={batches[0]}", "ok",
                      f"{sr['tokens_per_s'] / base['tokens_per_s']:.2f}x")
    for batch in batches[1:]:
        pair(batch)


def time_hellaswag(check: Check, device: str, plan: tuple, path: Path) -> None:
    import torch

    from gpt2lab.config import MODEL_PRESETS
    from gpt2lab.device import autocast_for
    from gpt2lab.evals.hellaswag import evaluate_hellaswag, load_hellaswag
    from gpt2lab.model import GPT, GPTConfig

    preset, items_limit = plan[0], plan[7]
    name = f"{preset} (random weights), {path.name}"
    if check.over_budget("hellaswag", name):
        return

    def score():
        items = load_hellaswag(path)
        items = items[:items_limit] if items_limit else items
        torch.manual_seed(0)
        model = GPT(GPTConfig(**MODEL_PRESETS[preset])).to(device)
        dt, (metrics, _) = harness.timed(lambda: evaluate_hellaswag(model, items, device,
                                                                    autocast_for(device, torch.bfloat16)), device)
        check.add("hellaswag", f"{len(items):,} items, {name}", "ok",
                  f"{dt:.1f} s, {len(items) / dt:,.0f} items/s (both scoring styles; "
                  f"acc_norm {metrics['completion_acc_norm']:.3f} of random weights)", dt)

    check.run("hellaswag", name, score)


def table(rows: list[dict]) -> str:
    lines = ["| stage | case | result | figures | s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['case']} | {r['result']} | {r['figures']} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cpu" if args.dry else "cuda")
    plan = DRY if args.dry else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = harness.start(device)
    check = Check(args.budget_s)
    stages = set(args.stages.split(","))
    if "tests" in stages:
        run_tests(check, out, args.pytest_args + (" -k flash" if args.dry and not args.pytest_args else ""))
    peaks = None
    if "throughput" in stages:
        peaks = check.run("peaks", "matmul", lambda: measure_peaks(device, sizes=plan[6]))
    if peaks is not None:
        sheet = (f"; datasheet {peaks['datasheet_name']} {peaks['datasheet_bf16_flops'] / 1e12:g}"
                 if "datasheet_bf16_flops" in peaks else "")
        check.add("peaks", "matmul", "ok", f"bf16 {peaks['peak_bf16_flops'] / 1e12:.1f} TFLOP/s "
                  f"(n={peaks['peak_bf16_n']}), fp32/TF32 {peaks['peak_fp32_flops'] / 1e12:.1f}{sheet}")
    if args.hellaswag:
        hs = Path(args.hellaswag)
    elif args.dry:
        hs = ROOT / "tests" / "data" / "hellaswag_val_120.jsonl"
    else:
        hs = harness.data_dir() / "hellaswag" / "hellaswag_val.jsonl"
    if "hellaswag" in stages:
        time_hellaswag(check, device, plan, hs)
    if peaks is not None:
        run_throughput(check, device, plan, peaks)
    text = table(check.rows)
    failed = sum(r["result"] == "FAILED" for r in check.rows)
    summary = f"{len(check.rows)} rows, {failed} failed, {check.elapsed():.0f} s in all on {machine['device_name']}"
    print(harness.machine_line(machine))
    print(text)
    print(summary)
    (out / "gpu_check.md").write_text(f"{harness.machine_line(machine)}\n\n{text}\n\n{summary}\n")
    harness.write_results(out / "gpu_check.json", machine, {"dry": args.dry, "peaks": peaks, "rows": check.rows})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
