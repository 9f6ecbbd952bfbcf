"""``gpt2lab eval harness``: EleutherAI's lm-evaluation-harness with gpt2lab as its model.

:class:`GPT2LabLM` is a harness ``LM`` backend over a gpt2lab model (any model source: a run or
checkpoint folder needs no export). It tokenizes exactly as the harness's own ``hf`` backend
(``TemplateLM``: a context's trailing spaces move to the continuation, ``context + continuation``
is encoded whole and split after the context's tokens, an empty context becomes the end-of-text
token, over-long inputs lose tokens on the left), then scores with gpt2lab's packed scorer:
requests with the same context (a multiple-choice item's choices) share one row, and the context
is computed once. Rolling log-likelihoods (perplexity tasks) use the harness's own windows;
``generate_until`` decodes with a reused :class:`~gpt2lab.generate.Decoder`.

A task whose data the hub cannot give (offline, or no access) can read a local file through a
task YAML that includes the harness's definition, in a folder passed as ``--include-path``
(:func:`write_local_task` writes one)::

    # mytasks/hellaswag_local.yaml
    include: /path/to/site-packages/lm_eval/tasks/hellaswag/hellaswag.yaml
    task: hellaswag_local
    dataset_path: json
    dataset_name: null
    training_split: null
    dataset_kwargs:
      data_files:
        validation: /data/hellaswag_val.jsonl

Under torchrun the harness gives each process its share of the requests and gathers the
results on rank 0, which writes ``OUT/harness_results.json``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from lm_eval import simple_evaluate
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.tasks import TaskManager

from ..device import autocast_for, device_type, resolve_dtype
from ..distributed import DistInfo, init_distributed, shutdown
from ..errors import UserError
from ..fileio import write_atomic
from ..generate import Decoder, autocast_dtype, generate
from ..tokenizer import Tokenizer, load_tokenizer
from ..weights import load_pretrained, model_tokenizer
from .common import results_folder
from .scoring import Request, score_fast

TASKS_DIR = Path(lm_utils.__file__).parent / "tasks"  # the harness's own task definitions


def write_local_task(folder: str | os.PathLike, task: str, base: str, split: str, data: str | os.PathLike,
                     **overrides) -> Path:
    """Write ``folder/<task>.yaml``: the harness's own task ``base`` (e.g. "hellaswag/hellaswag.yaml",
    relative to its tasks folder) renamed ``task``, reading its ``split`` from the local jsonl ``data``;
    ``overrides`` are further keys (``training_split=None``, ``metric_list=[...]``). Pass ``folder``
    as ``--include-path``."""
    doc = {"include": str(TASKS_DIR / base), "task": task, "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {split: str(data)}}, **overrides}
    path = Path(folder) / f"{task}.yaml"
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    return path


class GPT2LabLM(TemplateLM):
    """A harness model backed by a gpt2lab ``GPT`` (in eval mode) on ``device``, under ``autocast``."""

    def __init__(self, model, device: str = "cpu", autocast=None, info: DistInfo | None = None,
                 batch_tokens: int | None = None, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.model, self._device, self.autocast, self.batch_tokens = model.eval(), device, autocast, batch_tokens
        self.info = info or DistInfo(device=device)
        self._rank, self._world_size = self.info.rank, self.info.world_size
        self.tok = tokenizer or load_tokenizer()  # the model's (weights.model_tokenizer)
        self._decoder: Decoder | None = None

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_token

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy) of each (context, continuation) token pair; pairs with the same
        context go into one packed request, so the context is computed once."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(pairs):
            groups.setdefault(tuple(ctx), []).append(i)
        reqs = [Request(list(ctx), [pairs[i][1] for i in idxs], self.tok.eot_token) for ctx, idxs in groups.items()]
        scores = score_fast(self.model, reqs, self._device, self.autocast, batch_tokens=self.batch_tokens)
        out: list = [None] * len(pairs)
        for idxs, sc in zip(groups.values(), scores):
            for i, s in zip(idxs, sc):
                out[i] = (s.logprob, s.greedy)
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out = self._score([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The whole text's log-likelihood, in the harness's disjoint windows of max_length tokens."""
        windows, owner = [], []
        for n, (text,) in enumerate(r.args for r in requests):
            for w in lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text),
                                                        prefix_token=self.prefix_token_id,
                                                        max_seq_len=self.max_length, context_len=1):
                windows.append(lm_utils.make_disjoint_window(w))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (lp, _) in zip(owner, self._score(windows)):
            totals[n] += lp
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuations, cut at the first ``until`` string."""
        if self._decoder is None:  # packed for autocast's dtype, as generate() requires
            self._decoder = Decoder(self.model, dtype=autocast_dtype(self.autocast, device_type(self._device)))
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            kw = dict(gen_kwargs)
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", 256))
            temperature = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
            ctx = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.tok.eot_token]
            tokens = generate(self._decoder, ctx, max_new, temperature=temperature, stop_token=self.tok.eot_token,
                              autocast=self.autocast, seed=1234, vocab=self.tok.n_vocab)[0]
            text = self.tok_decode(tokens)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    # the harness gathers request counts and results through these when world_size > 1
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        tensor = tensor if tensor.dim() else tensor[None]  # a scalar per rank gathers into a vector
        parts = [torch.empty_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self._world_size == 1:
            return [obj]
        parts = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, parts, dst=dst)
        return parts

    def barrier(self) -> None:
        if self._world_size > 1:
            dist.barrier()


def _data_error(e: BaseException, tasks: list[str]) -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return UserError(
        f"the harness could not load the data of {', '.join(tasks)} ({type(e).__name__}: {first}); to use a local "
        f"file, write a task YAML with 'include: {TASKS_DIR}/<task folder>/<task>.yaml', 'dataset_path: json' and "
        "'dataset_kwargs: {data_files: {<split>: FILE}}' in a folder, and pass it as --include-path (see "
        "gpt2lab/evals/harness.py)")


def run_harness(model_path: str, tasks: list[str], *, out: str | None = None, device: str = "auto",
                dtype: str = "auto", limit: int | None = None, num_fewshot: int | None = None,
                include_path: str | None = None, batch_tokens: int | None = None, tokenizer: str | None = None) -> dict:
    """``gpt2lab eval harness``: run harness ``tasks`` on a gpt2lab model; rank 0 writes
    ``OUT/harness_results.json`` (default OUT: ``evals/<name of MODEL>``) and gets {task: metrics}."""
    if include_path and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path}: no such folder")
    harness_log = logging.getLogger("lm_eval")
    level = harness_log.level
    harness_log.setLevel(logging.ERROR)  # indexing the task folders warns about its own duplicate tags
    try:
        manager = TaskManager(include_path=include_path)
    finally:
        harness_log.setLevel(level)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"--tasks: unknown harness task(s) {', '.join(unknown)}; `lm-eval ls tasks` lists them, "
                        "and --include-path adds your own task YAMLs")
    out_dir = results_folder(out, model_path)
    info = init_distributed(device)
    try:
        model = load_pretrained(model_path, info.device)
        lm = GPT2LabLM(model, info.device, autocast_for(info.device, resolve_dtype(dtype, info.device)), info,
                       batch_tokens, model_tokenizer(model_path, model.config, tokenizer))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit or None,
                                      num_fewshot=num_fewshot, log_samples=False)
        except (ConnectionError, FileNotFoundError) as e:
            raise _data_error(e, tasks) from None
        except Exception as e:  # the datasets/hub libraries' own errors for a missing or unreachable dataset
            if type(e).__module__.split(".")[0] in ("datasets", "huggingface_hub", "requests", "urllib3"):
                raise _data_error(e, tasks) from None
            raise
        if not info.is_main or results is None:
            return {}
        write_atomic(out_dir / "harness_results.json",
                     json.dumps(results, indent=2, default=lm_utils.handle_non_serializable) + "\n")
        summary = {"task": "harness", "model": str(model_path),
                   "dtype": str(resolve_dtype(dtype, info.device)).replace("torch.", ""),
                   "world_size": info.world_size, "out": str(out_dir)}
        summary["results"] = {t: {k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "alias"}
                              for t, m in results["results"].items()}
        return summary
    finally:
        shutdown(info)
