"""What the training loop runs every N steps besides training: validation loss, downstream tasks
(HellaSwag, LAMBADA) and samples. Each is a small object with ``every`` and ``run``; the loop
asks each whether it is due and hands it the model, and logs what it returns.

To add an evaluation during training, write a class like these (``kind`` names its records in
metrics.jsonl) and add it in :func:`build_evaluators`.

Under FSDP2 a forward of the sharded model needs every rank in lockstep: validation loss runs
sharded on all ranks, while tasks and samples score one full copy gathered on rank 0
(``needs_full``), gathered once per step for all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..config import Config
from ..data.shards import find_shards
from ..distributed import DistInfo
from ..generate import generate
from ..tokenizer import Tokenizer, load_tokenizer
from .common import select_items
from .hellaswag import evaluate_hellaswag, load_hellaswag
from .lambada import evaluate_lambada, file_variant, load_lambada
from .loss import eval_windows, score_windows


def due(every: int, step: int, last: bool) -> bool:
    """N > 0: every N steps and at the end; 0: only at the end; -1: never."""
    return every >= 0 and (last or (every > 0 and step % every == 0))


class Evaluator:
    kind = ""  # the metrics record kind
    every = -1
    needs_full = False  # runs on rank 0 alone, on the full (for FSDP2: gathered) model

    def run(self, model, full) -> dict | None:
        """This step's results (None on ranks that have none); ``full`` is the full model on rank 0."""
        raise NotImplementedError

    def lines(self, result: dict) -> list[str]:
        return []

    def summary(self, result: dict) -> dict:
        """What goes into train()'s returned summary."""
        return {self.kind: result}

    def record(self, result: dict) -> dict:
        """What goes into RUN_DIR/evals/step_N.json."""
        return {self.kind: result}


class ValLoss(Evaluator):
    """Validation loss, and bits per byte of the same windows (the tokenizer's bytes per token)."""

    kind = "val"

    def __init__(self, windows: list, batch: int, every: int, token_bytes: list[int], *, device: str, autocast,
                 info: DistInfo, sharded: bool):
        self.windows, self.batch, self.every, self.token_bytes = windows, batch, every, token_bytes
        self.device, self.autocast, self.info, self.sharded = device, autocast, info, sharded

    def run(self, model, full) -> dict:
        r = score_windows(model, self.windows, self.batch, self.device, self.autocast, self.info, self.sharded,
                          self.token_bytes)
        return {"val_loss": r["loss"], "val_bpb": r["bpb"], "val_tokens": r["tokens"]}

    def lines(self, result):
        return [f"val loss {result['val_loss']:.4f} | {result['val_bpb']:.4f} bits/byte "
                f"({result['val_tokens']:,} tokens)"]

    def summary(self, result):
        return {"val_loss": result["val_loss"], "val_bpb": result["val_bpb"]}

    def record(self, result):
        return dict(result)


class Task(Evaluator):
    """A downstream task scored on all ranks (items split over them), or on rank 0's full copy under FSDP2."""

    def __init__(self, kind: str, data: list, evaluate: Callable, *, every: int, describe: Callable[[dict], str],
                 device: str, autocast, info: DistInfo, sharded: bool):
        self.kind, self.data, self.evaluate, self.every, self.describe = kind, data, evaluate, every, describe
        self.device, self.autocast, self.info, self.needs_full = device, autocast, info, sharded

    def run(self, model, full):
        if self.needs_full:
            return self.evaluate(full, self.data, self.device, self.autocast)[0] if self.info.is_main else None
        return self.evaluate(model, self.data, self.device, self.autocast, self.info)[0]

    def lines(self, result):
        return [self.describe(result)]


class Samples(Evaluator):
    """eval.sample_count continuations of eval.sample_prompt, with a fixed seed, on rank 0."""

    kind = "sample"
    needs_full = True

    def __init__(self, cfg: Config, device: str, autocast, info: DistInfo, tokenizer: Tokenizer | None = None):
        self.cfg, self.device, self.autocast, self.info = cfg, device, autocast, info
        self.tokenizer = tokenizer
        self.every = cfg.eval.sample_every

    def run(self, model, full):
        if not self.info.is_main:
            return None
        samples = sample_texts(full, self.cfg, self.autocast, self.tokenizer)
        return {"prompt": self.cfg.eval.sample_prompt, "samples": samples}

    def lines(self, result):
        return [f"sample: {text!r}" for text in result["samples"]]

    def summary(self, result):
        return {"samples": result["samples"]}

    def record(self, result):
        return {}


def sample_texts(model, cfg: Config, autocast=None, tokenizer: Tokenizer | None = None) -> list[str]:
    """The samples training prints: eval.sample_count continuations of eval.sample_prompt (fixed seed)."""
    e = cfg.eval
    tok = tokenizer or load_tokenizer(cfg.data.tokenizer)
    prompt = tok.encode(e.sample_prompt) or [tok.eot_token]
    outs = generate(
        model, prompt, e.sample_tokens, num_samples=e.sample_count, temperature=e.sample_temperature,
        top_k=e.sample_top_k or None, seed=cfg.train.seed, autocast=autocast, vocab=tok.n_vocab,
    )
    return [e.sample_prompt + tok.decode(o[len(prompt) :]) for o in outs]


def build_evaluators(cfg: Config, device: str, autocast, info: DistInfo, sharded: bool, log,
                     tokenizer: Tokenizer | None = None) -> list[Evaluator]:
    """The evaluations the config asks for, with the run's tokenizer (data.tokenizer). Their data is loaded
    (downloaded) now, before training, so that a data problem stops the run at once."""
    e, T = cfg.eval, cfg.train.seq_len
    tok = tokenizer or load_tokenizer(cfg.data.tokenizer)
    out: list[Evaluator] = []
    if e.every >= 0:
        if not find_shards(cfg.data.dir, cfg.data.val_split, required=False):
            log(f"warning: no '{cfg.data.val_split}' shards in {cfg.data.dir}; validation loss is skipped")
        else:
            windows = eval_windows(cfg.data.dir, cfg.data.val_split, T, e.val_tokens, verify=cfg.data.verify)
            out.append(ValLoss(windows, e.val_batch or cfg.train.micro_batch, e.every, tok.token_bytes(),
                               device=device, autocast=autocast, info=info, sharded=sharded))
    common = dict(device=device, autocast=autocast, info=info, sharded=sharded)
    if e.hellaswag_every >= 0:
        items = load_hellaswag(e.hellaswag_data or None, option="eval.hellaswag_data=PATH")
        out.append(Task("hellaswag", select_items(items, e.hellaswag_items),
                        functools.partial(evaluate_hellaswag, gather=False, tokenizer=tok), every=e.hellaswag_every,
                        describe=lambda m: f"hellaswag acc_norm {m['completion_acc_norm']:.4f} "
                                           f"(lm-eval {m['lm_eval_acc_norm']:.4f}, {m['items']:,} items)", **common))
    if e.lambada_every >= 0:
        texts = load_lambada(e.lambada_data or None, option="eval.lambada_data=PATH")
        name = f"lambada_{file_variant(texts) if e.lambada_data else 'openai'}"  # which set the figures are of
        out.append(Task("lambada", select_items(texts, e.lambada_items),
                        functools.partial(evaluate_lambada, gather=False, tokenizer=tok), every=e.lambada_every,
                        describe=lambda m: f"lambada acc {m['acc']:.4f} ppl {m['ppl']:.2f} "
                                           f"({m['items']:,} passages) of {name}", **common))
    if e.sample_every >= 0:
        out.append(Samples(cfg, device, autocast, info, tok))
    return out
