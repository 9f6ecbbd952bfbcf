import json
import math

import pytest
import torch

from cli_helpers import gpt2lab, one_line_error
from gpt2lab.checkpoint import load_model
from gpt2lab.errors import UserError
from gpt2lab.evals.lambada import evaluate_lambada, fetch_openai, load_lambada, split_passage
from gpt2lab.evals.scoring import Request, score_fast, score_plain
from gpt2lab.tokenizer import get_tokenizer
from gpt2lab.weights import load_pretrained


@pytest.fixture(scope="module")
def original_txt(small_data):
    return small_data / "lambada_test_plain_text_head.txt"


def test_original_test_set_reads_as_one_passage_a_line(small_data, original_txt):
    texts = load_lambada(original_txt, "original")
    assert len(texts) == 120  # the first 120 lines of the 5,153-passage test set
    assert load_lambada(small_data / "lambada_original_test_head.jsonl", "original") == texts[:40]  # its first 40
    ctx, word = split_passage(texts[0])
    assert word == " signs" and ctx + word == texts[0].strip() and not ctx.endswith(" ")


@pytest.mark.slow
def test_fast_matches_plain_and_metrics_follow(micro_ckpt, original_txt):
    model, _ = load_model(micro_ckpt)
    texts = load_lambada(original_txt, "original")[:40]
    texts.append(" ".join([texts[0]] * 3))  # longer than the micro model's 128 positions: context cut from the left
    fast_m, fast = evaluate_lambada(model, texts, batch_tokens=500)
    plain_m, plain = evaluate_lambada(model, texts, plain=True)
    for f, p in zip(fast, plain):
        assert abs(f["logprob"] - p["logprob"]) < 1e-4 and f["greedy"] == p["greedy"] and f["tokens"] == p["tokens"]
    assert fast_m["acc"] == plain_m["acc"] and math.isclose(fast_m["ppl"], plain_m["ppl"], rel_tol=1e-5)
    n = len(texts)
    assert fast_m["items"] == n and fast_m["acc"] == sum(r["greedy"] for r in fast) / n
    assert math.isclose(fast_m["ppl"], math.exp(-sum(r["logprob"] for r in fast) / n), rel_tol=1e-12)
    tok = get_tokenizer()
    assert [r["tokens"] for r in fast] == [len(tok.encode_ordinary(" " + t.split(" ")[-1])) for t in texts]


def test_greedy_means_every_token_is_the_argmax(micro_ckpt):
    """Continuations built from the model's own argmax tokens are greedy; changing one token makes them not."""
    model, _ = load_model(micro_ckpt)
    ctx = get_tokenizer().encode_ordinary("The quick brown fox jumps over the lazy dog because")
    with torch.no_grad():
        t1 = int(model(torch.tensor([ctx]))[0][0, -1].argmax())
        t2 = int(model(torch.tensor([ctx + [t1]]))[0][0, -1].argmax())
    other = (t2 + 1) % 50000
    req = Request(ctx, [[t1, t2], [t1, other], [other, t2], [t1]])
    for scores in (score_plain(model, [req])[0], score_fast(model, [req])[0]):
        assert [s.greedy for s in scores] == [True, False, False, True]
        assert [s.n_tokens for s in scores] == [2, 2, 2, 1]


def test_converted_hf_model_gives_transformers_numbers(tmp_path, original_txt):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256)).eval()
    hf.save_pretrained(tmp_path / "hf")
    texts = load_lambada(original_txt, "original")[100:112]
    metrics, recs = evaluate_lambada(load_pretrained(tmp_path / "hf"), texts)
    tok = get_tokenizer()
    lps = []
    for t, rec in zip(texts, recs):
        ctx, word = t.rsplit(" ", 1)
        c, w = tok.encode_ordinary(ctx), tok.encode_ordinary(" " + word)
        with torch.no_grad():
            logp = hf(torch.tensor([c + w])).logits[0, :-1].float().log_softmax(-1)
        rows = logp[len(c) - 1 :]
        lps.append(sum(rows[j, t_].item() for j, t_ in enumerate(w)))
        assert abs(lps[-1] - rec["logprob"]) < 1e-4
        assert rec["greedy"] == all(int(rows[j].argmax()) == t_ for j, t_ in enumerate(w))
    assert math.isclose(metrics["ppl"], math.exp(-sum(lps) / len(lps)), rel_tol=1e-6)


@pytest.mark.slow
def test_cli_original_and_openai_from_local_file(tmp_path, micro_ckpt, original_txt):
    subset = tmp_path / "lambada.txt"
    subset.write_text("\n".join(original_txt.read_text().splitlines()[:20]) + "\n")
    r = gpt2lab("eval", "lambada", micro_ckpt, "--variant", "original", "--data", subset, "--out", tmp_path / "out",
                "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "lambada_original_summary.json").read_text())
    recs = [json.loads(x) for x in (tmp_path / "out" / "lambada_original_examples.jsonl").read_text().splitlines()]
    assert summary["task"] == "lambada_original" and summary["items"] == len(recs) == 20
    assert summary == {k: v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items() if k != "out"} | {
        "definitions": summary["definitions"]}
    assert recs[0]["target"] == original_txt.read_text().splitlines()[0].split(" ")[-1]
    # as lambada_openai from a local jsonl (the download location is unreachable here): same passages, same numbers
    jsonl = tmp_path / "openai.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in subset.read_text().splitlines()))
    r = gpt2lab("eval", "lambada", micro_ckpt, "--data", jsonl, "--variant", "openai", "--out", tmp_path / "out",
                "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    openai = json.loads((tmp_path / "out" / "lambada_openai_summary.json").read_text())
    assert openai["task"] == "lambada_openai" and openai["acc"] == summary["acc"] and openai["ppl"] == summary["ppl"]
    # without --variant, a local file is the set its text is: the original (lowercased) one here (issue 29 item 2)
    r = gpt2lab("eval", "lambada", micro_ckpt, "--data", jsonl, "--out", tmp_path / "out2", "--dtype", "float32")
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["task"] == "lambada_original", r.stderr


def test_a_local_file_is_the_variant_its_text_is(original_txt):
    from gpt2lab.evals.lambada import file_variant

    original = load_lambada(original_txt)
    assert file_variant(original) == "original"
    assert file_variant([original[0].capitalize(), *original[1:]]) == "openai"  # OpenAI's set keeps its capitals


@pytest.mark.slow
def test_bad_input_and_download(tmp_path, micro_ckpt, original_txt):
    err = one_line_error(gpt2lab("eval", "lambada", micro_ckpt, "--variant", "original"))
    assert "--data" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "a b"}\n')
    assert str(bad) in one_line_error(gpt2lab("eval", "lambada", micro_ckpt, "--data", bad))
    with pytest.raises(UserError, match="context and a last word"):
        (tmp_path / "one.txt").write_text("lonely\n")
        load_lambada(tmp_path / "one.txt", "original")
    with pytest.raises(UserError, match="no such LAMBADA file"):
        load_lambada(tmp_path / "nope.txt", "openai")
    dest = tmp_path / "cache" / "lambada_openai.jsonl"
    with pytest.raises(UserError, match="cannot download LAMBADA.*--data PATH"):
        fetch_openai(dest, urls=["http://127.0.0.1:9/lambada_test.jsonl"])
    # training's way of giving a local file is its config key, not a flag train does not have (issue 29 item 6)
    with pytest.raises(UserError, match="cannot download LAMBADA.*pass it as eval.lambada_data=PATH"):
        fetch_openai(dest, urls=["http://127.0.0.1:9/lambada_test.jsonl"], option="eval.lambada_data=PATH")
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in original_txt.read_text().splitlines()[:3]))
    fetch_openai(dest, urls=["http://127.0.0.1:9/lambada_test.jsonl", src.as_uri()])  # the first reachable one
    assert len(load_lambada(dest)) == 3


@pytest.mark.slow
def test_training_logs_lambada_and_report(tmp_path, small_shards, original_txt):
    from gpt2lab.config import load_config
    from gpt2lab.device import autocast_for, resolve_dtype
    from gpt2lab.evals.common import select_items
    from gpt2lab.evals.report import eval_history
    from gpt2lab.metrics import read_metrics
    from gpt2lab.train import train

    run = tmp_path / "run"
    cfg = load_config(None, ["model.preset=micro", f"data.dir={small_shards}", f"train.run_dir={run}", "micro_batch=4",
                             "seq_len=32", "max_steps=3", "warmup_steps=1", "eval.every=-1", "sample_every=-1",
                             "eval.lambada_every=2", f"eval.lambada_data={original_txt}", "eval.lambada_items=9"])
    lines = []
    train(cfg, log=lines.append)
    logged = read_metrics(run, "lambada")
    assert [r["step"] for r in logged] == [2, 3] and all(r["items"] == 9 for r in logged)
    assert any("lambada acc" in line and "(9 passages) of lambada_original" in line for line in lines)  # the set
    saved = json.loads((run / "evals" / "step_00000003.json").read_text())
    assert saved["lambada"] == {k: v for k, v in logged[-1].items() if k not in ("kind", "step")}
    # the numbers are those of the model saved at that step, scored as training scores it
    model, _ = load_model(run)
    texts = select_items(load_lambada(original_txt), 9)
    again, _ = evaluate_lambada(model, texts, autocast=autocast_for("cpu", resolve_dtype("auto", "cpu")))
    assert again == saved["lambada"]
    rows = eval_history(run)
    assert [r["step"] for r in rows] == [2, 3] and rows[-1]["lambada_ppl"] == saved["lambada"]["ppl"]
    r = gpt2lab("report", run)
    assert r.returncode == 0 and "lambada_acc" in r.stdout.splitlines()[0], r.stderr



@pytest.mark.parametrize("name", ["lambada.json", "lambada.JSONL"])
def test_json_lines_are_read_as_such_whatever_the_suffix_case(tmp_path, original_txt, name):
    texts = load_lambada(original_txt, "original")[:5]
    (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert load_lambada(tmp_path / name, "original") == texts  # not the JSON text as passages


def test_a_model_that_puts_nothing_on_the_words_has_infinite_perplexity(micro_ckpt, original_txt):
    model, _ = load_model(micro_ckpt)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(1e5)  # logits of 1e5 and more: log-probabilities far below -709
    metrics, records = evaluate_lambada(model, load_lambada(original_txt, "original")[:5])
    assert sum(r["logprob"] for r in records) / 5 < -709
    assert metrics["ppl"] == math.inf
