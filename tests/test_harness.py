"""gpt2lab's HellaSwag and LAMBADA numbers against EleutherAI's lm-evaluation-harness itself.

The harness runs offline, with its own task definitions (a task YAML that ``include``s the
installed harness's ``hellaswag.yaml`` / ``lambada_openai.yaml`` and points the dataset at a
local jsonl), on a small random model exported with ``convert to-hf`` and scored in float32 by
its ``hf`` backend. Predictions must agree item by item, log-likelihoods within 1e-4.
"""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2lab.evals.harness import GPT2LabLM, write_local_task
from gpt2lab.evals.hellaswag import evaluate_hellaswag, load_hellaswag
from gpt2lab.evals.lambada import evaluate_lambada, load_lambada
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.weights import export_hf

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random GPT with GPT-2's vocabulary, as a gpt2lab model and as a transformers folder."""
    root = tmp_path_factory.mktemp("harness")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, n_layer=2, n_head=2, n_embd=64)).eval()
    with torch.no_grad():  # livelier than init, so the normalisations disagree on some items
        model.transformer.wte.weight.mul_(5)
    from gpt2lab.checkpoint import save_checkpoint
    from gpt2lab.config import Config

    ckpt = save_checkpoint(root / "run", 1, model, Config(model=model.config), {"loader": {}, "rng": []})
    export_hf(ckpt, root / "hf")
    return model, root


def run_harness(root: Path, task: str, include: str, data: Path, split: str, **overrides) -> list[dict]:
    """The harness's per-document samples for ``task`` (its own YAML, our local data), offline."""
    tasks = root / "tasks"
    write_local_task(tasks, task, include, split, data, **overrides)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model="hf", model_args={"pretrained": str(root / "hf"), "dtype": "float32"},
                          tasks=[task], task_manager=TaskManager(include_path=str(tasks)), device="cpu",
                          batch_size=8, log_samples=True)
    return sorted(out["samples"][task], key=lambda s: s["doc_id"])


def test_hellaswag_matches_the_harness_item_by_item(exported, tmp_path):
    model, root = exported
    # the official schema splits the context in two (ctx_b lower-case, capitalised by both); our
    # copy has ctx only, so split it at its last sentence end
    items = []
    for it in load_hellaswag(DATA / "hellaswag_val_120.jsonl"):
        a, dot, b = it["ctx"].rpartition(". ")
        items.append(dict(it, ctx_a=a + "." if dot else it["ctx"], ctx_b=b if dot else ""))
    data = tmp_path / "hellaswag.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in items))
    samples = run_harness(root, "gpt2lab_hellaswag", "hellaswag/hellaswag.yaml", data, "validation",
                          training_split=None, metric_list=[{"metric": m} for m in ("acc", "acc_norm", "acc_bytes")])
    metrics, recs = evaluate_hellaswag(model, items, styles=("lm_eval",))
    assert len(samples) == len(recs) == len(items)
    old_norm_differs = 0
    for s, r in zip(samples, recs):
        harness_lls = [float(resp[0]) for resp in s["filtered_resps"]]
        assert max(abs(a - b) for a, b in zip(harness_lls, r["lm_eval"]["logprob"])) < 1e-4, s["doc_id"]
        ours = r["lm_eval"]
        assert (s["acc"], s["acc_norm"], s["acc_bytes"]) == (
            float(ours["pred"] == r["label"]), float(ours["pred_norm"] == r["label"]),
            float(ours["pred_bytes"] == r["label"])), s["doc_id"]
        # the definition before the fix: per UTF-8 byte of " " + ending
        old = max(range(4), key=lambda i: (ours["logprob"][i] / (ours["bytes"][i] + 1), -i))
        old_norm_differs += old != ours["pred_norm"]
    assert old_norm_differs > 0  # this data tells the two normalisations apart: the test can fail
    n = len(samples)
    for ours, theirs in (("lm_eval_acc", "acc"), ("lm_eval_acc_norm", "acc_norm"), ("lm_eval_acc_bytes", "acc_bytes")):
        assert metrics[ours] == pytest.approx(sum(s[theirs] for s in samples) / n, abs=1e-12)


def test_lambada_matches_the_harness_item_by_item(exported, tmp_path):
    model, root = exported
    texts = [json.loads(line)["text"] for line in (DATA / "lambada_original_test_head.jsonl").read_text().splitlines()]
    samples = run_harness(root, "gpt2lab_lambada", "lambada/lambada_openai.yaml",
                          DATA / "lambada_original_test_head.jsonl", "test")
    metrics, recs = evaluate_lambada(model, texts)
    assert len(samples) == len(recs) == len(texts)
    for s, r in zip(samples, recs):
        ll, greedy = s["filtered_resps"][0]
        assert abs(float(ll) - r["logprob"]) < 1e-4, s["doc_id"]
        assert bool(greedy) == r["greedy"] == bool(s["acc"]), s["doc_id"]


def test_gpt2lab_backend_gives_the_hf_backends_results(exported, tmp_path):
    """gpt2lab as the harness's model (GPT2LabLM, packed scorer, Decoder) against the harness's own hf
    backend on the same weights: loglikelihood (multiple choice and LAMBADA), loglikelihood_rolling
    and generate_until, document by document."""
    model, root = exported
    data = DATA / "lambada_original_test_head.jsonl"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    local = (f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
             "test_split: test\n")
    write_local_task(tasks, "t_lambada", "lambada/lambada_openai.yaml", "test", data)
    (tasks / "rolling.yaml").write_text(
        f"task: t_rolling\n{local}output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{{{text}}}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (tasks / "gen.yaml").write_text(
        f"task: t_gen\n{local}output_type: generate_until\n"
        "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\ndoc_to_target: \"{{text.split(' ')[-1]}}\"\n"
        "generation_kwargs:\n  until: ['.', ',']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = ["t_lambada", "t_rolling", "t_gen"]
    common = dict(tasks=names, task_manager=TaskManager(include_path=str(tasks)), log_samples=True, limit=12)
    hf = simple_evaluate(model="hf", model_args={"pretrained": str(root / "hf"), "dtype": "float32"}, device="cpu",
                         batch_size=4, **common)
    ours = simple_evaluate(model=GPT2LabLM(model), **common)
    for task in names:
        a = sorted(hf["samples"][task], key=lambda s: s["doc_id"])
        b = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        assert len(a) == len(b) == 12
        for x, y in zip(a, b):
            if task == "t_gen":
                assert x["filtered_resps"] == y["filtered_resps"], (x["doc_id"], x["resps"], y["resps"])
            elif task == "t_rolling":
                assert float(y["filtered_resps"][0]) == pytest.approx(float(x["filtered_resps"][0]), rel=1e-5, abs=1e-4)
            else:
                (lx, gx), (ly, gy) = x["filtered_resps"][0], y["filtered_resps"][0]
                assert abs(float(lx) - float(ly)) < 1e-4 and bool(gx) == bool(gy), x["doc_id"]
        if task == "t_gen":  # something was generated (the comparison is not between empty strings)
            assert sum(bool(str(y["filtered_resps"][0]).strip()) for y in b) >= 6
        for metric, value in hf["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-5), (task, metric)


def test_cli_eval_harness_writes_results_and_explains_missing_data(exported, tmp_path):
    from cli_helpers import gpt2lab, one_line_error

    model, root = exported
    items = load_hellaswag(DATA / "hellaswag_val_120.jsonl")[:8]
    data = tmp_path / "hs.jsonl"
    data.write_text("".join(json.dumps(dict(it, ctx_a=it["ctx"], ctx_b="")) + "\n" for it in items))
    tasks = tmp_path / "tasks"
    write_local_task(tasks, "hs_local", "hellaswag/hellaswag.yaml", "validation", data, training_split=None)
    r = gpt2lab("eval", "harness", root / "run", "--tasks", "hs_local", "--include-path", tasks, "--dtype", "float32",
                "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    written = json.loads((tmp_path / "out" / "harness_results.json").read_text())
    metrics, _ = evaluate_hellaswag(model, [dict(it, ctx_a=it["ctx"], ctx_b="") for it in items], styles=("lm_eval",))
    assert written["results"]["hs_local"]["acc_norm,none"] == summary["results"]["hs_local"]["acc_norm,none"]
    assert summary["results"]["hs_local"]["acc_norm,none"] == pytest.approx(metrics["lm_eval_acc_norm"])
    err = one_line_error(gpt2lab("eval", "harness", root / "run", "--tasks", "nope", "--include-path", tasks))
    assert "unknown harness task(s) nope" in err
    # under torchrun (2 gloo processes) the harness splits the requests and rank 0 gets the same figures
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                         "gpt2lab", "eval", "harness", root / "run", "--tasks", "hs_local", "--include-path", tasks,
                         "--dtype", "float32", "--out", tmp_path / "out2"], capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    two = json.loads(r2.stdout.strip().splitlines()[-1])
    assert two["world_size"] == 2 and two["results"]["hs_local"] == pytest.approx(summary["results"]["hs_local"])
    # no network: said at once, one line naming --data, without the hub libraries' minute of retries (issue 29
    # items 1, 11); the hub here is a closed port, and the offline switches the tests set are left out
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    r = subprocess.run([sys.executable, "-m", "gpt2lab", "eval", "harness", root / "run", "--tasks", "hellaswag",
                        "--limit", "2"], capture_output=True, text=True, timeout=300,
                       env={**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2 and "Retrying" not in r.stderr, r.stderr
    line = one_line_error(r)
    assert "could not load the data of hellaswag (the Hugging Face hub cannot be reached" in line
    assert "--data TASK=FILE" in line


def test_cli_eval_harness_reads_local_files(exported, tmp_path):
    """--data TASK=FILE: the harness's own hellaswag and lambada_openai on local files, in every format eval
    hellaswag and eval lambada read (HellaSwag without ctx_a/ctx_b, LAMBADA as plain text), no YAML written by
    hand, the same figures as gpt2lab's own scorers on the same items (issue 29)."""
    from cli_helpers import gpt2lab

    model, root = exported
    hs, lam = DATA / "hellaswag_val_120.jsonl", DATA / "lambada_test_plain_text_head.txt"
    r = gpt2lab("eval", "harness", root / "run", "--tasks", "hellaswag,lambada_openai", "--data", f"hellaswag={hs}",
                "--data", f"lambada_openai={lam}", "--limit", 8, "--dtype", "float32", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["data"] == {"hellaswag": str(hs), "lambada_openai": str(lam)}
    assert json.loads((tmp_path / "out" / "harness_summary.json").read_text()) == summary
    items = load_hellaswag(hs)[:8]
    assert "ctx_a" not in items[0]
    hellaswag, _ = evaluate_hellaswag(model, items, styles=("lm_eval",))
    got = summary["results"]["hellaswag"]
    assert (got["acc,none"], got["acc_norm,none"]) == pytest.approx((hellaswag["lm_eval_acc"],
                                                                      hellaswag["lm_eval_acc_norm"]))
    lambada, _ = evaluate_lambada(model, load_lambada(lam)[:8])
    got = summary["results"]["lambada_openai"]
    assert (got["acc,none"], got["perplexity,none"]) == pytest.approx((lambada["acc"], lambada["ppl"]), rel=1e-4)


def test_harness_data_options(exported, tmp_path):
    """--data's forms and mistakes, in one line each; HellaSwag's other schema (ctx_a/ctx_b, labels as strings)
    too (issue 29)."""
    from gpt2lab.errors import UserError
    from gpt2lab.evals.harness import parse_data, run_harness

    hs = tmp_path / "hellaswag_ctx_ab.jsonl"
    hs.write_text("".join(json.dumps(dict(it, ctx_a=it["ctx"].rpartition(" ")[0], ctx_b=it["ctx"].rpartition(" ")[2],
                                          label=str(it["label"]))) + "\n"
                          for it in load_hellaswag(DATA / "hellaswag_val_official_head.jsonl")))
    assert parse_data([str(hs)], ["hellaswag"]) == {"hellaswag": hs}  # one task: FILE alone
    for data, tasks, says in (([f"piqa={hs}"], ["hellaswag", "arc_easy"], "write TASK=FILE with TASK one of --tasks"),
                              (["hellaswag=nope.jsonl"], ["hellaswag"], "no such file nope.jsonl")):
        with pytest.raises(UserError, match=says):
            parse_data(data, tasks)
    model, root = exported
    run = functools.partial(run_harness, root / "run", device="cpu", dtype="float32", limit=4)
    summary = run(["hellaswag"], data=[f"hellaswag={hs}"], out=tmp_path / "a")
    items = load_hellaswag(hs)[:4]
    assert "ctx_a" in items[0]
    ours, _ = evaluate_hellaswag(model, items, styles=("lm_eval",))
    assert summary["results"]["hellaswag"]["acc_norm,none"] == pytest.approx(ours["lm_eval_acc_norm"])
    with pytest.raises(UserError, match="is not a single harness task"):
        run(["lambada"], data=[f"lambada={hs}"])  # a group
    with pytest.raises(UserError, match="lacks a field the task reads .*'goal' is undefined"):
        run(["piqa"], data=[f"piqa={hs}"])  # another task's file
