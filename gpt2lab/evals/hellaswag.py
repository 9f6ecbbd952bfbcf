"""HellaSwag: pick the right one of 4 endings by the model's log-likelihood.

Data: the official validation set ``hellaswag_val.jsonl`` (10,042 items; fields ``ctx`` or
``ctx_a``/``ctx_b``, ``endings``, ``label``, ``activity_label``, ...), downloaded from the
HellaSwag repository into the cache (:func:`~gpt2lab.evals.common.cache_dir`) when missing,
or a local file (``--data``).

Two common definitions are reported, each with its own text preparation:

- ``completion`` (build-nanogpt, the number in its training plots): context ``ctx`` as it is,
  each ending as ``" " + ending``, no other processing. ``completion_acc`` picks the ending
  with the highest summed log-likelihood; ``completion_acc_norm`` the lowest mean loss per
  ending token (build-nanogpt's ``acc_norm``, quoted as "HellaSwag" there).
- ``lm_eval`` (EleutherAI lm-eval-harness ``hellaswag``): context
  ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` (``ctx`` when the file
  has no ``ctx_a``/``ctx_b``), endings ``" " + preprocess(ending)``, where ``preprocess`` strips,
  turns ``" [title]"`` into ``". "``, drops other ``[...]`` markers and double spaces.
  ``lm_eval_acc`` is the highest summed log-likelihood; ``lm_eval_acc_norm`` the highest
  log-likelihood divided by the ending's length in characters and ``lm_eval_acc_bytes`` in
  UTF-8 bytes, both of the preprocessed ending without the leading space, as the harness
  computes its ``acc_norm`` and ``acc_bytes`` (``len(choice)`` of its ``doc_to_choice``; the
  space is the target delimiter, outside the choice). Tested against the harness itself.

Context and ending are tokenized separately, as both reference implementations do. The
scores come from :mod:`gpt2lab.evals.scoring` (fast path by default; ``plain=True`` for the
reference one). Under torchrun, rank r scores items r, r + world, ...; counts are all-reduced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..distributed import DistInfo, all_reduce_sum
from ..errors import UserError
from ..tokenizer import Tokenizer, load_tokenizer
from .common import cache_dir, download, gather_records, read_jsonl, run_task, select_items
from .scoring import Request, score_fast, score_plain

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
STYLES = ("completion", "lm_eval")
METRICS = ("completion_acc", "completion_acc_norm", "lm_eval_acc", "lm_eval_acc_norm", "lm_eval_acc_bytes")
DEFINITIONS = {
    "completion_acc": "build-nanogpt text (ctx + ' ' + ending); argmax of the summed log-likelihood of the ending",
    "completion_acc_norm": "build-nanogpt text; argmin of the mean loss per ending token (build-nanogpt's acc_norm)",
    "lm_eval_acc": "lm-eval-harness text (activity label, preprocessing); argmax of the summed log-likelihood",
    "lm_eval_acc_norm": "lm-eval-harness text; argmax of the log-likelihood divided by the preprocessed ending's "
                        "length in characters, without the leading space (the harness's acc_norm)",
    "lm_eval_acc_bytes": "lm-eval-harness text; argmax of the log-likelihood divided by the preprocessed ending's "
                         "length in UTF-8 bytes, without the leading space (the harness's acc_bytes)",
}


def default_path() -> Path:
    return cache_dir() / "hellaswag" / "hellaswag_val.jsonl"


def load_hellaswag(path: str | os.PathLike | None = None, option: str = "--data PATH") -> list[dict]:
    """Validated HellaSwag items from ``path``, or from the cache (downloaded when missing); ``option`` is how the
    user gives a local file (``--data PATH``, ``eval.hellaswag_data=PATH``), for the messages."""
    if path is None:
        path = default_path()
        if not path.is_file():
            download(URL, path, what="HellaSwag validation data", option=option)
    path = Path(path)
    items = read_jsonl(path, "HellaSwag", option)
    for n, it in enumerate(items, 1):
        where = f"{path} item {n}"
        has_ctx = isinstance(it.get("ctx"), str) or (isinstance(it.get("ctx_a"), str)
                                                     and isinstance(it.get("ctx_b"), str))
        if not has_ctx:
            raise UserError(f"{where}: no 'ctx' (or 'ctx_a' and 'ctx_b') text field; is this HellaSwag jsonl?")
        endings = it.get("endings")
        if not (isinstance(endings, list) and len(endings) == 4
                and all(isinstance(e, str) and e.strip() for e in endings)):
            raise UserError(f"{where}: 'endings' must be a list of 4 non-empty strings")
        label = it.get("label")
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < 4):
            raise UserError(f"{where}: 'label' must be 0..3, got {label!r} (the test split has no labels; use the "
                            "val split)")
        it["label"] = label
    return items


def lm_eval_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow markers
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def texts(item: dict, style: str) -> tuple[str, list[str]]:
    """(context, continuations) of an item as the style writes them."""
    if style == "completion":
        ctx = item["ctx"] if isinstance(item.get("ctx"), str) else item["ctx_a"] + " " + item["ctx_b"]
        return ctx, [" " + e for e in item["endings"]]
    if style == "lm_eval":
        if isinstance(item.get("ctx_a"), str) and isinstance(item.get("ctx_b"), str):
            ctx = item["ctx_a"] + " " + item["ctx_b"].capitalize()
        else:
            ctx = item["ctx"]
        label = item.get("activity_label")
        query = f"{label}: {ctx}" if isinstance(label, str) and label else ctx
        return lm_eval_preprocess(query), [" " + lm_eval_preprocess(e) for e in item["endings"]]
    raise ValueError(f"unknown style {style!r}")


def requests_for(items: list[dict], style: str, tokenizer: Tokenizer | None = None) -> list[Request]:
    tok = tokenizer or load_tokenizer()
    out = []
    for it in items:
        ctx, conts = texts(it, style)
        out.append(Request(tok.encode(ctx), [tok.encode(c) for c in conts], tok.eot_token))
    return out


def _argmax(values) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties: the first


def evaluate_hellaswag(
    model,
    items: list[dict],
    device: str = "cpu",
    autocast=None,
    dist_info: DistInfo | None = None,
    *,
    styles: tuple[str, ...] = STYLES,
    batch_tokens: int | None = None,
    plain: bool = False,
    gather: bool = True,
    tokenizer: Tokenizer | None = None,
) -> tuple[dict, list[dict]]:
    """Score ``items``; return (metrics, per-example records).

    Metrics are over all items on every rank. Records are those of every rank, or with
    ``gather=False`` only this rank's (no object collective: training needs the metrics only).
    """
    info = dist_info or DistInfo(device=device)
    was_training = model.training
    mine = list(range(info.rank, len(items), info.world_size))
    local_items = [items[i] for i in mine]
    records = [{"index": i, "ind": items[i].get("ind"), "label": items[i]["label"]} for i in mine]
    for style in styles:
        reqs = requests_for(local_items, style, tokenizer)
        if plain:
            scores = score_plain(model, reqs, device, autocast)
        else:
            scores = score_fast(model, reqs, device, autocast, batch_tokens=batch_tokens, greedy=False)
        for rec, it, sc in zip(records, local_items, scores):
            lps = [s.logprob for s in sc]
            if style == "completion":
                ntok = [s.n_tokens for s in sc]
                rec["completion"] = {"logprob": lps, "tokens": ntok, "pred_sum": _argmax(lps),
                                     "pred_mean": _argmax([lp / n for lp, n in zip(lps, ntok)])}
            else:
                choices = [c[1:] for c in texts(it, "lm_eval")[1]]  # the harness's choices: no delimiter space
                nchars, nbytes = [len(c) for c in choices], [len(c.encode("utf-8")) for c in choices]
                rec["lm_eval"] = {"logprob": lps, "chars": nchars, "bytes": nbytes, "pred": _argmax(lps),
                                  "pred_norm": _argmax([lp / n for lp, n in zip(lps, nchars)]),
                                  "pred_bytes": _argmax([lp / b for lp, b in zip(lps, nbytes)])}
    model.train(was_training)
    keys = {"completion_acc": ("completion", "pred_sum"), "completion_acc_norm": ("completion", "pred_mean"),
            "lm_eval_acc": ("lm_eval", "pred"), "lm_eval_acc_norm": ("lm_eval", "pred_norm"),
            "lm_eval_acc_bytes": ("lm_eval", "pred_bytes")}
    used = [m for m in METRICS if keys[m][0] in styles]
    counts = torch.zeros(1 + len(used), dtype=torch.float64, device=device)
    counts[0] = len(records)
    for j, m in enumerate(used, 1):
        style, key = keys[m]
        counts[j] = sum(r[style][key] == r["label"] for r in records)
    all_reduce_sum(counts, info)
    counts = counts.tolist()
    metrics = {"items": int(counts[0])}
    metrics.update({m: counts[j] / max(counts[0], 1) for j, m in enumerate(used, 1)})
    if gather:
        records = sorted(gather_records(records, info), key=lambda r: r["index"])
    return metrics, records


def run_hellaswag(
    model_path: str,
    *,
    data: str | None = None,
    out: str | None = None,
    limit: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    style: str = "both",
    batch_tokens: int | None = None,
    plain: bool = False,
    tokenizer: str | None = None,
) -> dict:
    """``gpt2lab eval hellaswag``: score a model, write the per-example file and the summary JSON.

    ``gpt2lab eval hellaswag`` takes these arguments as its options (``--help`` shows this text).

    Args:
        model_path: checkpoint folder, run folder, or a Hugging Face GPT-2 folder or hub name
        data: a HellaSwag jsonl (default: downloaded to the cache)
        out: folder for the result files (default: evals/<name of MODEL>)
        limit: score only N items, a fixed subset spread evenly over the file, as training's evaluation does (0: all)
        device: auto, cpu, cuda or cuda:N
        dtype: autocast dtype (auto: bfloat16 where the hardware has it)
        style: which definitions to compute: completion (build-nanogpt's), lm-eval (lm-evaluation-harness') or both
        batch_tokens: tokens per forward batch
        plain: use the plain one-example-at-a-time scorer (reference, slow)
        tokenizer: gpt2 or a tokenizer folder (gpt2lab tokenizer train); default: the model's own (a checkpoint's
            copy, else gpt2); one that differs from the model's recorded tokenizer is an error
    """
    styles = STYLES if style == "both" else (style.replace("-", "_"),)
    if any(s not in STYLES for s in styles):
        raise UserError(f"--style {style!r}: choose completion, lm-eval or both")
    return run_task(
        "hellaswag", model_path, lambda: select_items(load_hellaswag(data), limit),
        lambda model, items, info, autocast, tok: evaluate_hellaswag(
            model, items, info.device, autocast, info, styles=styles, batch_tokens=batch_tokens, plain=plain,
            tokenizer=tok),
        data_label=str(data or default_path()), out=out, device=device, dtype=dtype, plain=plain, tokenizer=tokenizer,
        definitions=DEFINITIONS,
    )
