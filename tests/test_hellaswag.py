import json
import math

import pytest
import torch

from cli_helpers import gpt2lab, one_line_error
from gpt2lab.checkpoint import load_model
from gpt2lab.config import load_config
from gpt2lab.errors import UserError
from gpt2lab.evals.common import download
from gpt2lab.evals.hellaswag import evaluate_hellaswag, load_hellaswag, requests_for, select_items, texts
from gpt2lab.evals.report import eval_history
from gpt2lab.evals.scoring import Request, fit
from gpt2lab.metrics import read_metrics
from gpt2lab.tokenizer import get_tokenizer
from gpt2lab.train import train
from gpt2lab.weights import load_pretrained


@pytest.fixture(scope="module")
def hs_file(small_data):
    return small_data / "hellaswag_val_120.jsonl"


@pytest.fixture(scope="module")
def hs_items(hs_file):
    return select_items(load_hellaswag(hs_file), 40)


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return path


def argmax(xs):
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


@pytest.mark.slow
def test_fast_matches_plain_fp32(micro_ckpt, hs_items):
    """Same prediction for every item and log-likelihoods within 1e-4, for both text styles, over several batches;
    one item has a context longer than the model's 128 positions, so it is cut from the left."""
    model, _ = load_model(micro_ckpt)
    long_item = dict(hs_items[0], ctx=" ".join([hs_items[0]["ctx"]] * 30), ind=-1)
    items = hs_items[:16] + [long_item]
    assert len(requests_for([long_item], "completion")[0].context) > model.config.block_size
    fast, fast_recs = evaluate_hellaswag(model, items, batch_tokens=400)
    plain, plain_recs = evaluate_hellaswag(model, items, plain=True)
    assert fast == plain and fast["items"] == len(items)
    for f, p in zip(fast_recs, plain_recs):
        for style, preds in (("completion", ("pred_sum", "pred_mean")),
                             ("lm_eval", ("pred", "pred_norm", "pred_bytes"))):
            assert max(abs(a - b) for a, b in zip(f[style]["logprob"], p[style]["logprob"])) < 1e-4
            assert all(f[style][k] == p[style][k] for k in preds), (f, p)
        assert f["completion"]["tokens"] == p["completion"]["tokens"]


def test_fit_cuts_context_from_the_left():
    ctx, conts = fit(Request(list(range(100)), [[1] * 30, [2] * 10]), block_size=64)
    assert ctx == list(range(100))[-(64 + 1 - 30):] and len(ctx) + 30 - 1 == 64
    assert fit(Request([], [[5]]), 64)[0] == [50256]  # empty context: end-of-text, as lm-eval does


@pytest.mark.slow
def test_converted_hf_model_gives_transformers_numbers(tmp_path, hs_items):
    """A transformers GPT2LMHeadModel, loaded by gpt2lab from its folder, scores as transformers itself does."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=160)).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok = get_tokenizer()
    items = [it for it in hs_items if len(tok.encode_ordinary(it["ctx"])) + 40 < 160][:12]
    metrics, recs = evaluate_hellaswag(load_pretrained(tmp_path / "hf"), items, styles=("completion",))
    correct = 0
    for it, rec in zip(items, recs):
        ctx = tok.encode_ordinary(it["ctx"])
        lps = []
        for e in it["endings"]:
            end = tok.encode_ordinary(" " + e)
            ids = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = hf(ids).logits[0, :-1].float().log_softmax(-1)
            lps.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(end)))
        assert max(abs(a - b) for a, b in zip(lps, rec["completion"]["logprob"])) < 1e-4
        assert argmax(lps) == rec["completion"]["pred_sum"]
        correct += argmax([lp / n for lp, n in zip(lps, rec["completion"]["tokens"])]) == it["label"]
    assert metrics["completion_acc_norm"] == correct / len(items)


def test_lm_eval_text_preparation(small_data):
    item = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
            "endings": ["is using wrap.", "starts pulling up roofing."], "label": 1}
    ctx, ends = texts(item, "lm_eval")
    assert ctx == "Roof shingle removal: A man is sitting on a roof. He"
    assert ends == [" is using wrap.", " starts pulling up roofing."]
    assert texts(item, "completion") == ("A man is sitting on a roof. he",
                                         [" is using wrap.", " starts pulling up roofing."])
    official = load_hellaswag(small_data / "hellaswag_val_official_head.jsonl")
    wikihow = next(it for it in official if "[title]" in it["ctx"])
    ctx, ends = texts(wikihow, "lm_eval")
    assert "[" not in ctx and "  " not in ctx and ctx.startswith(wikihow["activity_label"] + ": ")
    assert ". " + wikihow["ctx"].split("[title]")[1].split("[")[0].strip() in ctx  # " [title]" became ". "
    assert all(e.startswith(" ") and "[" not in e for e in ends)


@pytest.mark.slow
def test_cli_writes_results_consistent_with_summary(tmp_path, micro_ckpt, hs_items):
    data = write_jsonl(tmp_path / "hs.jsonl", hs_items[:12])
    r = gpt2lab("eval", "hellaswag", micro_ckpt, "--data", data, "--out", tmp_path / "out", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "out" / "hellaswag_summary.json").read_text())
    recs = [json.loads(line) for line in (tmp_path / "out" / "hellaswag_examples.jsonl").read_text().splitlines()]
    assert printed["completion_acc"] == summary["completion_acc"] and summary["items"] == len(recs) == 12
    assert [r_["label"] for r_ in recs] == [it["label"] for it in hs_items[:12]]
    assert set(summary["definitions"]) == {"completion_acc", "completion_acc_norm", "lm_eval_acc", "lm_eval_acc_norm",
                                           "lm_eval_acc_bytes"}
    # the summary's accuracies follow from the per-example scores
    n = len(recs)
    c = [r_["completion"] for r_ in recs]
    l_ = [r_["lm_eval"] for r_ in recs]
    assert summary["completion_acc"] == sum(argmax(x["logprob"]) == r_["label"] for x, r_ in zip(c, recs)) / n
    assert summary["completion_acc_norm"] == sum(
        argmax([lp / t for lp, t in zip(x["logprob"], x["tokens"])]) == r_["label"] for x, r_ in zip(c, recs)) / n
    assert summary["lm_eval_acc"] == sum(argmax(x["logprob"]) == r_["label"] for x, r_ in zip(l_, recs)) / n
    assert summary["lm_eval_acc_norm"] == sum(
        argmax([lp / c for lp, c in zip(x["logprob"], x["chars"])]) == r_["label"] for x, r_ in zip(l_, recs)) / n
    assert summary["lm_eval_acc_bytes"] == sum(
        argmax([lp / b for lp, b in zip(x["logprob"], x["bytes"])]) == r_["label"] for x, r_ in zip(l_, recs)) / n
    # the same model as a Hugging Face folder gives the same numbers
    from gpt2lab.weights import export_hf

    export_hf(micro_ckpt, tmp_path / "hf")
    r = gpt2lab("eval", "hellaswag", tmp_path / "hf", "--data", data, "--out", tmp_path / "out_hf",
                "--dtype", "float32", "--style", "completion")
    assert r.returncode == 0, r.stderr
    hf_summary = json.loads((tmp_path / "out_hf" / "hellaswag_summary.json").read_text())
    assert hf_summary["completion_acc"] == summary["completion_acc"]
    assert hf_summary["completion_acc_norm"] == summary["completion_acc_norm"] and "lm_eval_acc" not in hf_summary


@pytest.mark.slow
def test_random_init_scores_near_chance(micro_ckpt, hs_file):
    model, _ = load_model(micro_ckpt)
    metrics, _ = evaluate_hellaswag(model, select_items(load_hellaswag(hs_file), 120), styles=("completion",),
                                    batch_tokens=16384)
    assert 0.15 < metrics["completion_acc_norm"] < 0.35, metrics  # 0.25 +- 2.5 standard deviations


@pytest.mark.slow
def test_bad_data_and_model_are_one_line_errors(tmp_path, micro_ckpt, hs_items):
    with pytest.raises(UserError, match="no such HellaSwag file"):
        load_hellaswag(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(hs_items[0]) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl line 2"):
        load_hellaswag(bad)
    write_jsonl(bad, [hs_items[0], {k: v for k, v in hs_items[1].items() if k != "label"}])
    with pytest.raises(UserError, match=r"bad.jsonl item 2: 'label'"):
        load_hellaswag(bad)
    write_jsonl(bad, [dict(hs_items[0], endings=hs_items[0]["endings"][:3])])
    with pytest.raises(UserError, match="4 non-empty strings"):
        load_hellaswag(bad)
    err = one_line_error(gpt2lab("eval", "hellaswag", micro_ckpt, "--data", bad, "--out", tmp_path / "o"))
    assert str(bad) in err
    good = write_jsonl(tmp_path / "good.jsonl", hs_items[:2])
    err = one_line_error(gpt2lab("eval", "hellaswag", tmp_path / "no_model", "--data", good))
    assert "no_model" in err
    (tmp_path / "empty_dir").mkdir()
    err = one_line_error(gpt2lab("eval", "hellaswag", tmp_path / "empty_dir", "--data", good))
    assert "not a model" in err


def test_download_is_atomic_and_checked(tmp_path, hs_items):
    src = write_jsonl(tmp_path / "src.jsonl", hs_items[:3])
    dest = tmp_path / "cache" / "hellaswag_val.jsonl"
    with pytest.raises(UserError, match="checksum mismatch.*--data"):
        download(src.as_uri(), dest, sha256={src.as_uri(): "0" * 64})
    assert not dest.exists() and not list(dest.parent.iterdir())  # nothing half-written left behind
    with pytest.raises(UserError, match="cannot download.*--data PATH"):
        download("http://127.0.0.1:9/hellaswag_val.jsonl", dest, timeout=5)
    download(src.as_uri(), dest)
    assert [it["ind"] for it in load_hellaswag(dest)] == [it["ind"] for it in hs_items[:3]]


def test_a_download_cut_off_is_refused_not_cached(tmp_path, hs_items):
    """A server that announces the whole file and drops the connection after three items (a dropped
    connection ends the body early without an error): not kept as the validation set."""
    import http.server
    import threading

    whole = write_jsonl(tmp_path / "src.jsonl", hs_items[:20]).read_bytes()

    class CutOff(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            self.wfile.write(b"".join(whole.splitlines(keepends=True)[:3]))
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), CutOff)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest = tmp_path / "cache" / "hellaswag_val.jsonl"
    try:
        with pytest.raises(UserError, match=rf"cut off after [\d,]+ of {len(whole):,} bytes.*--data PATH"):
            download(f"http://127.0.0.1:{server.server_port}/hellaswag_val.jsonl", dest, timeout=10)
    finally:
        server.shutdown()
    assert not dest.exists()


@pytest.mark.slow
def test_training_logs_hellaswag_and_report(tmp_path, small_shards, hs_items):
    data = write_jsonl(tmp_path / "hs.jsonl", hs_items[:8])
    run = tmp_path / "run"
    cfg = load_config(None, ["model.preset=micro", f"data.dir={small_shards}", f"train.run_dir={run}", "micro_batch=4",
                             "seq_len=32", "max_steps=3", "warmup_steps=1", "eval.every=2", "val_tokens=512",
                             "eval.hellaswag_every=2", f"eval.hellaswag_data={data}", "eval.hellaswag_items=6",
                             "sample_every=-1", "train.log_every=1"])
    train(cfg, log=lambda _m: None)
    logged = read_metrics(run, "hellaswag")
    assert [r["step"] for r in logged] == [2, 3] and all(r["items"] == 6 for r in logged)
    saved = json.loads((run / "evals" / "step_00000003.json").read_text())
    assert saved["step"] == 3 and saved["hellaswag"] == {
        k: v for k, v in logged[-1].items() if k not in ("kind", "step")}
    assert math.isclose(saved["val_loss"], read_metrics(run, "val")[-1]["val_loss"])
    # the logged numbers are those of the model saved at that step, evaluated as training does (same dtype)
    from gpt2lab.device import autocast_for, resolve_dtype

    model, _ = load_model(run)
    again, _ = evaluate_hellaswag(model, select_items(hs_items[:8], 6),
                                  autocast=autocast_for("cpu", resolve_dtype("auto", "cpu")))
    assert again == saved["hellaswag"]
    rows = eval_history(run)
    assert [r["step"] for r in rows] == [2, 3] and rows[-1]["val_loss"] == saved["val_loss"]
    assert rows[0]["completion_acc_norm"] == logged[0]["completion_acc_norm"] and rows[0]["train_loss"] is not None
    r = gpt2lab("report", run)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n\n")[0].strip().splitlines()  # the table; then the status and the environment
    assert "val_loss" in lines[0] and "completion_acc_norm" in lines[0] and len(lines) == 4
    assert lines[-1].split()[0] == "3"
    one_line_error(gpt2lab("report", tmp_path / "nope"))


@pytest.mark.parametrize("task", ["hellaswag", "lambada"])
def test_training_with_missing_task_data_fails_before_training(tmp_path, small_shards, task):
    cfg = load_config(None, ["model.preset=micro", f"data.dir={small_shards}", f"train.run_dir={tmp_path / 'run'}",
                             "micro_batch=2", "seq_len=16", "max_steps=2", f"eval.{task}_every=1",
                             f"eval.{task}_data={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(UserError, match="missing.jsonl"):
        train(cfg, log=lambda _m: None)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("task", ["hellaswag", "lambada"])
def test_training_without_a_download_names_the_config_key(tmp_path, small_shards, task, monkeypatch):
    """Offline, training says to set eval.<task>_data, not to pass --data, which train does not take (issue 29
    item 6)."""
    from gpt2lab.evals import hellaswag, lambada

    monkeypatch.setenv("GPT2LAB_CACHE", str(tmp_path / "cache"))  # nothing downloaded yet
    monkeypatch.setattr(hellaswag, "URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    monkeypatch.setattr(lambada, "OPENAI_URLS", ["http://127.0.0.1:9/lambada_test.jsonl"])
    cfg = load_config(None, ["model.preset=micro", f"data.dir={small_shards}", f"train.run_dir={tmp_path / 'run'}",
                             "micro_batch=2", "seq_len=16", "max_steps=2", f"eval.{task}_every=1"])
    with pytest.raises(UserError, match=f"cannot download .*pass it as eval.{task}_data=PATH") as e:
        train(cfg, log=lambda _m: None)
    assert "--data" not in str(e.value)
