"""The benchmark runs for real on a tiny model; figures are checked for sanity, never for speed."""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import gpt2lab
from gpt2lab import perf
from gpt2lab.bench import bench_train, recipe_configs, run_bench
from gpt2lab.bench_table import add_peer_ratios, format_table
from gpt2lab.config import MODEL_PRESETS
from gpt2lab.device import cpu_supports_bf16
from gpt2lab.errors import UserError
from gpt2lab.model import GPT
from gpt2lab.perf import describe_machine, machine_line, measure_peaks, time_cases, timed, warn_if_busy

REPO_ROOT = Path(__file__).resolve().parent.parent
# The benchmark scripts' shared modules, imported as the scripts import them (python benchmarks/x.py
# puts that folder on the path): the one place the tests do so.
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import harness  # noqa: E402


def test_measure_peaks_small():
    peaks = measure_peaks("cpu", repeats=2, sizes=(128, 256))
    for dtype in ("bf16", "fp32"):
        assert math.isfinite(peaks[f"peak_{dtype}_flops"]) and peaks[f"peak_{dtype}_flops"] > 0
        assert peaks[f"peak_{dtype}_n"] in (128, 256)
    assert peaks["bf16_native"] == cpu_supports_bf16()


@pytest.mark.slow
def test_run_bench_micro_in_process():
    buf = io.StringIO()
    results = run_bench(preset="micro", batch=2, seq_len=32, dtype="auto", compile_mode="off", steps=1, warmup=1,
                        device="cpu", as_json=False, out=buf, log=None)
    assert len(results) == 1
    r = results[0]
    assert r["preset"] == "micro" and r["batch"] == 2 and r["seq_len"] == 32 and r["compile"] is False
    assert r["tokens_per_s"] > 0 and r["ms_per_step"] > 0
    own = r["mfu"] if r["dtype"] == "bfloat16" else r["mfu_fp32"]  # auto is fp32 on a CPU without bf16
    assert 0 < own <= 1 and r["mfu"] > 0 and r["mfu_fp32"] > 0
    assert r["peak_bf16_tflops"] > 0 and r["peak_fp32_tflops"] > 0
    assert r["flops_per_token"] > 6 * 1e6  # micro has ~3.3M parameters
    assert r["params"] > 0 and r["peak_mem_bytes"] > 0
    assert math.isfinite(r["final_loss"])
    # The figures are consistent with each other.
    assert r["tokens_per_s"] == pytest.approx(2 * 32 * 1000 / r["ms_per_step"])
    assert r["achieved_tflops"] * 1e12 == pytest.approx(r["flops_per_token"] * r["tokens_per_s"])
    table = buf.getvalue()
    assert "tok/s" in table and "micro" in table and "MFU bf16" in table


# Made-up peaks, for tests that check the arithmetic rather than the measurement.
PEAKS = {"peak_bf16_flops": 1e12, "peak_bf16_n": 0, "peak_fp32_flops": 1e11, "peak_fp32_n": 0,
         "fp32_tf32": False, "matmul_repeats": 1}


def test_bench_train_block_size_follows_seq_len():
    # micro has block_size 128; a longer sequence must still run.
    r = bench_train("micro", batch=1, seq_len=160, dtype="float32", compile=False, steps=1, warmup=0, device="cpu",
                    peaks=PEAKS)
    assert r["dtype"] == "float32" and r["tokens_per_s"] > 0
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 1.0)
    assert r["mfu_fp32"] == pytest.approx(r["achieved_tflops"] / 0.1)
    assert "micro" in format_table([r], PEAKS)


@pytest.mark.parametrize("recipe", ["configs/gpt2-124m.yaml", "configs/speedrun.yaml"])
def test_a_recipe_at_a_smaller_preset(recipe):
    """profile_step.py --preset tiny -T 256 --recipe configs/gpt2-124m.yaml: the recipe's seq_len of 1024 does not
    fit tiny's block of 256 and was refused; the benchmark's own length is the one timed."""
    model_cfg, optim_cfg = recipe_configs("tiny", 256, str(REPO_ROOT / recipe))
    assert model_cfg.n_layer == MODEL_PRESETS["tiny"]["n_layer"] and model_cfg.block_size == 256
    assert optim_cfg.optimizer == ("muon" if "speedrun" in recipe else "adamw")


def test_run_bench_json_lines():
    buf = io.StringIO()
    run_bench(preset="micro", batch=2, seq_len=32, steps=1, warmup=0, device="cpu", as_json=True, peaks=PEAKS,
              out=buf, log=None)
    (line,) = buf.getvalue().strip().splitlines()
    r = json.loads(line)
    assert r["preset"] == "micro" and r["tokens_per_s"] > 0 and r["mfu"] > 0


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="unknown preset"):
        run_bench(preset="nope", steps=1, warmup=0, device="cpu", log=None)
    with pytest.raises(UserError, match="--compile"):
        run_bench(preset="micro", compile_mode="maybe", device="cpu", log=None)
    with pytest.raises(UserError, match="--steps"):
        bench_train("micro", batch=2, seq_len=32, steps=0, device="cpu")


def test_compare_hf_and_recipe():
    """--compare hf: transformers' GPT-2 of the same shape after ours, same step, and our ratio to it;
    --recipe: the speedrun config's model and optimizer (Muon) timed instead of the GPT-2 recipe."""
    PEAKS = {"peak_bf16_flops": 1e12, "peak_fp32_flops": 1e11, "peak_bf16_n": 1, "peak_fp32_n": 1,
             "fp32_tf32": False, "matmul_repeats": 1}
    buf = io.StringIO()
    ours, hf = run_bench(preset="micro", batch=2, seq_len=32, dtype="float32", compile_mode="off", steps=1, warmup=1,
                         device="cpu", compare="hf", peaks=PEAKS, out=buf, log=None)
    assert (ours["model"], hf["model"]) == ("gpt2lab", "hf") and hf["params"] == ours["params"]
    assert ours["vs_peer"] == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"]) and "vs_peer" not in hf
    assert abs(hf["final_loss"] - math.log(50257)) < 0.5  # an untrained model of the same vocabulary, trained by it
    assert "vs peer" in buf.getvalue() and "x hf" in buf.getvalue()
    sr = bench_train("micro", batch=2, seq_len=32, dtype="float32", steps=1, warmup=0, device="cpu",
                     recipe=str(REPO_ROOT / "configs" / "speedrun.yaml"), peaks=PEAKS)
    assert sr["model"] == "gpt2lab speedrun" and sr["params"] > ours["params"]  # its LM head is its own
    with pytest.raises(UserError, match="--compare"):
        run_bench(preset="micro", compare="megatron", device="cpu", log=None)


def test_any_model_as_a_peer_and_the_ratio_to_the_best_peer():
    # make_model times any model with forward(x, y) -> (logits, loss) under the same step (how
    # benchmarks/peers.py runs nanoGPT's); vs_peer divides by the fastest peer of the same shape.
    made = []

    def make(cfg):
        made.append(cfg)
        return GPT(cfg)

    ours = bench_train("micro", batch=2, seq_len=32, dtype="float32", steps=1, warmup=0, device="cpu", peaks=PEAKS)
    mine = bench_train("micro", batch=2, seq_len=32, dtype="float32", steps=1, warmup=0, device="cpu", peaks=PEAKS,
                       peer="mine", make_model=make)
    assert mine["model"] == "mine" and made[0].n_layer == MODEL_PRESETS["micro"]["n_layer"]
    assert mine["final_loss"] == pytest.approx(ours["final_loss"], rel=1e-4)  # same model, seed, data
    slow = {**mine, "peer": "slow", "model": "slow", "tokens_per_s": mine["tokens_per_s"] / 2}
    add_peer_ratios([ours, slow, mine])
    assert ours["peer_name"] == "mine" and ours["vs_peer"] == pytest.approx(ours["tokens_per_s"] / mine["tokens_per_s"])


@pytest.mark.slow
def test_cli_bench_micro():
    proc = gpt2lab("bench", "--preset", "micro", "-B", "2", "-T", "32", "--steps", "1", "--warmup", "1",
                   "--compile", "off", "--device", "cpu", cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tok/s" in proc.stdout and "micro" in proc.stdout


def test_busy_cpu_retries_the_timed_steps():
    # A cpu share of 1.5 cannot be reached, so every attempt counts as busy: 1 + 1 retry = 2 attempts.
    said = []
    r = bench_train("micro", batch=2, seq_len=32, dtype="auto", compile=False, steps=1, warmup=0, device="cpu",
                    peaks=PEAKS, retry=harness.retry_while_busy(1, min_cpu_share=1.5), log=said.append)
    assert len(r["attempts"]) == 2 and r["cpu_share"] == r["attempts"][-1]["cpu_share"]
    assert r["ms_per_step"] == r["attempts"][-1]["ms_per_step"]
    assert "2 tries" in format_table([r], PEAKS)
    assert sum("< 1.5: other processes took CPU; timing again" in line for line in said) == 1


def test_timed_and_time_cases():
    seconds, out = timed(lambda: 42)
    assert out == 42 and seconds >= 0
    calls = []
    times = time_cases({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3  # one warm-up round, then the timed rounds alternate the cases
    assert set(times) == {"a", "b"} and all(len(t) == 2 and min(t) >= 0 for t in times.values())


def test_describe_machine_and_busy_warning(monkeypatch):
    m = describe_machine("cpu")
    assert m["device"] == "cpu" and m["cores"] >= 1 and m["threads"] >= 1 and m["torch"] == torch.__version__
    assert "host" in m and "load_avg_1m_at_start" in m
    assert m["device_name"] in machine_line(m)
    said = []
    monkeypatch.setattr(perf, "load_average", lambda: 0.0)
    warn_if_busy("cpu", said.append)
    assert said == []
    monkeypatch.setattr(perf, "load_average", lambda: 9.0)
    warn_if_busy("cpu", said.append)
    assert len(said) == 1 and "9.00" in said[0]


def test_harness_writes_results_with_command_and_machine(tmp_path):
    out = harness.write_results(tmp_path / "sub" / "r.json", {"host": "h"}, {"results": [1]})
    doc = json.loads(out.read_text())
    assert doc["machine"] == {"host": "h"} and doc["results"] == [1] and "command" in doc
    harness.write_results(out, {"host": "h"}, {"results": [1, 2]})  # rewritten in place
    assert json.loads(out.read_text())["results"] == [1, 2]
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary file left


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_train", "bench_generate", "bench_hellaswag", "bench_prepare", "profile_step",
                                    "bench_precision", "bench_malloc", "bench_decode_bound", "gpu_check",
                                    "bench_checkpoint", "bench_tokenizer", "speedrun_cpu"])
def test_benchmark_scripts_import(script):
    # --help imports the script and its harness without measuring anything.
    proc = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--help"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout
