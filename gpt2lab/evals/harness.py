"""``gpt2lab eval harness``: EleutherAI's lm-evaluation-harness with gpt2lab as its model.

:class:`GPT2LabLM` is a harness ``LM`` backend over a gpt2lab model (any model source: a run or
checkpoint folder needs no export). It tokenizes exactly as the harness's own ``hf`` backend
(``TemplateLM``: a context's trailing spaces move to the continuation, ``context + continuation``
is encoded whole and split after the context's tokens, an empty context becomes the end-of-text
token, over-long inputs lose tokens on the left), then scores with gpt2lab's packed scorer:
requests with the same context (a multiple-choice item's choices) share one row, and the context
is computed once. Rolling log-likelihoods (perplexity tasks) use the harness's own windows;
``generate_until`` decodes with a reused :class:`~gpt2lab.generate.Decoder`.

A task whose data the hub cannot give (offline, or no access) reads a local file: ``--data TASK=FILE``
(:func:`local_tasks`) writes a task YAML that includes the harness's own definition of TASK and reads
its evaluation split from FILE (:func:`write_local_task`), and runs that. HellaSwag and LAMBADA files
are read as ``eval hellaswag`` and ``eval lambada`` read them (every format they take), so the
harness scores the same text; a file of another task (json, jsonl, csv or parquet) must hold the
fields its definition reads. Without a connection to the hub, the harness is told so at once: a
dataset in the local cache is used, one that is not is a one-line error naming ``--data``.

Under torchrun the harness gives each process its share of the requests and gathers the
results on rank 0, which writes ``OUT/harness_results.json`` and ``OUT/harness_summary.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
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
from ..fileio import write_atomic, write_json_atomic
from ..generate import Decoder, autocast_dtype, generate
from ..tokenizer import Tokenizer, load_tokenizer
from ..weights import load_pretrained, model_tokenizer
from .common import results_folder
from .hellaswag import load_hellaswag, texts
from .lambada import load_lambada
from .scoring import Request, score_fast

TASKS_DIR = Path(lm_utils.__file__).parent / "tasks"  # the harness's own task definitions


def write_local_task(folder: str | os.PathLike, task: str, base: str | os.PathLike, split: str,
                     data: str | os.PathLike, **overrides) -> Path:
    """Write ``folder/<task>.yaml``: the harness's own task ``base`` (e.g. "hellaswag/hellaswag.yaml",
    relative to its tasks folder, or a path) renamed ``task``, reading its ``split`` from the local file
    ``data`` (json/jsonl, csv or parquet, by its suffix) and no training split; ``overrides`` are further
    keys (``metric_list=[...]``). Pass ``folder`` as ``--include-path``, or the YAML's path as the task."""
    builder = {".csv": "csv", ".parquet": "parquet"}.get(Path(data).suffix.lower(), "json")
    doc = {"include": str(TASKS_DIR / base), "task": task, "dataset_path": builder, "dataset_name": None,
           "dataset_kwargs": {"data_files": {split: str(Path(data).resolve())}}, "training_split": None, **overrides}
    path = Path(folder) / f"{task}.yaml"
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    return path


def _hellaswag_docs(path: Path) -> tuple[list[dict], dict]:
    """HellaSwag items as ``eval hellaswag`` reads them, with the harness's query and choices already made
    (hellaswag.texts' lm_eval style: the harness's own preprocessing, tested against it), so the task needs no
    ``process_docs`` and takes files without ctx_a/ctx_b or activity_label too."""
    docs = []
    for it in load_hellaswag(path, option="--data hellaswag=FILE"):
        query, endings = texts(it, "lm_eval")
        docs.append({"query": query, "choices": [e[1:] for e in endings], "label": it["label"]})
    return docs, {"process_docs": None}


def _lambada_docs(path: Path) -> tuple[list[dict], dict]:
    """LAMBADA passages as ``eval lambada`` reads them (jsonl with 'text', or one passage per line)."""
    return [{"text": t.strip()} for t in load_lambada(path, option="--data lambada_openai=FILE")], {}


# The harness tasks whose local files gpt2lab reads itself, by the hub dataset their definition names.
READERS = {"Rowan/hellaswag": _hellaswag_docs, "EleutherAI/lambada_openai": _lambada_docs,
           "cimec/lambada": _lambada_docs}


def parse_data(data: list[str] | None, tasks: list[str]) -> dict[str, Path]:
    """``--data TASK=FILE`` options (a plain FILE with one task) as {task: file}."""
    out = {}
    for text in data or []:
        task, sep, file = text.partition("=")
        if not (sep and task in tasks):
            if len(tasks) != 1 or (sep and not Path(text).exists()):
                raise UserError(f"--data {text}: write TASK=FILE with TASK one of --tasks ({', '.join(tasks)})")
            task, file = tasks[0], text
        if not Path(file).is_file():
            raise UserError(f"--data {text}: no such file {file}")
        out[task] = Path(file)
    return out


def local_tasks(manager: TaskManager, data: dict[str, Path], folder: Path) -> dict[str, str]:
    """{task: the path of a task YAML in ``folder`` that runs the harness's task on the local file ``data[task]``}
    (a task named by its path runs as the task it names)."""
    specs = {}
    for task, file in data.items():
        entry = manager.task_index.get(task)
        cfg = entry.cfg if entry is not None and entry.kind.name == "TASK" and entry.yaml_path else None
        split = cfg and (cfg.get("test_split") or cfg.get("validation_split"))
        if not split:
            raise UserError(f"--data {task}=FILE: {task} is not a single harness task with a test or validation "
                            "split (a group's tasks each take their own --data)")
        splits = {"validation_split": None, "test_split": None, "fewshot_split": None,
                  "test_split" if cfg.get("test_split") else "validation_split": split}
        reader = READERS.get(cfg.get("dataset_path"))
        if reader is not None:  # written as the harness's task reads it
            docs, extra = reader(file)
            file = folder / f"{task}.jsonl"
            write_atomic(file, "".join(json.dumps(d) + "\n" for d in docs))
            splits.update(extra)
        specs[task] = str(write_local_task(folder, task, entry.yaml_path, split, file, **splits))
    return specs


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
                              autocast=self.autocast, seed=1234, vocab=self.tok.n_vocab)[0][len(ctx) :]
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


def _data_error(e: BaseException, tasks: list[str], offline: bool) -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    why = "the Hugging Face hub cannot be reached and it is not in the local cache" if offline else \
        f"{type(e).__name__}: {first}"
    return UserError(
        f"the harness could not load the data of {', '.join(tasks)} ({why}); pass a local copy as --data TASK=FILE "
        "(repeat it for each task): for hellaswag the HellaSwag jsonl and for lambada_openai the LAMBADA file that "
        "eval hellaswag and eval lambada read, for another task a json, jsonl, csv or parquet file of its "
        "evaluation split with the fields its definition reads")


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers (any HTTP answer counts; proxies as the environment sets them)."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError is an OSError: no name resolution, no route, refused, timed out
        return False
    return True


def _go_offline() -> None:
    """No hub: datasets and huggingface_hub read their caches only, at once (not a minute of retries)."""
    import datasets
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True


@functools.lru_cache(maxsize=4)
def _index(include_path: str | None) -> TaskManager:
    """The harness's task index, with ``include_path``'s tasks (read once per process: it parses thousands of
    YAML files)."""
    harness_log = logging.getLogger("lm_eval")
    level = harness_log.level
    harness_log.setLevel(logging.ERROR)  # indexing the task folders warns about its own duplicate tags
    try:
        return TaskManager(include_path=include_path)
    finally:
        harness_log.setLevel(level)


def _task_manager(include_path: str | None, tasks: list[str]) -> TaskManager:
    """The harness's task index (with ``include_path``'s), every one of ``tasks`` in it."""
    if include_path and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path}: no such folder")
    manager = _index(str(Path(include_path).resolve()) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"--tasks: unknown harness task(s) {', '.join(unknown)}; `lm-eval ls tasks` lists them, "
                        "and --include-path adds your own task YAMLs")
    return manager


def _evaluate(lm, specs: list[str], manager: TaskManager, tasks: list[str], local: dict, **kwargs) -> dict | None:
    """simple_evaluate, with the data problems as one-line errors: a hub dataset that cannot be had (without a
    connection, found out first, so that the cache is read at once), a local file without the fields the task reads."""
    offline = False
    if any(t not in local for t in tasks) and not _datasets_offline():
        offline = not _hub_reachable()
        if offline:
            _go_offline()
    try:
        return simple_evaluate(model=lm, tasks=specs, task_manager=manager, log_samples=False, **kwargs)
    except Exception as e:
        error = _user_error(e, [t for t in tasks if t not in local], local, offline)
        if error is None:
            raise
        raise error from None


def _user_error(e: Exception, missing: list[str], local: dict, offline: bool) -> UserError | None:
    """The one-line error for what the harness raised about the data; None for anything else (a bug)."""
    if local and (isinstance(e, KeyError) or type(e).__name__ == "UndefinedError"):  # Python's, or a template's
        return UserError(f"a --data file ({', '.join(map(str, local.values()))}) lacks a field the task reads "
                         f"({type(e).__name__}: {str(e)[:200]}): give a file of the task's own dataset")
    hub = type(e).__module__.split(".")[0] in ("datasets", "huggingface_hub", "requests", "urllib3", "httpx")
    if missing and (hub or isinstance(e, (ConnectionError, FileNotFoundError))):  # a dataset not to be had
        return _data_error(e, missing, offline)
    return None


def _datasets_offline() -> bool:
    """Whether datasets reads its cache only already (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE set)."""
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def run_harness(model_path: str, tasks: list[str], *, data: list[str] | None = None, out: str | None = None,
                device: str = "auto", dtype: str = "auto", limit: int | None = None, num_fewshot: int | None = None,
                include_path: str | None = None, batch_tokens: int | None = None, tokenizer: str | None = None) -> dict:
    """``gpt2lab eval harness``: run harness ``tasks`` on a gpt2lab model, ``data`` (``TASK=FILE``) read from local
    files; rank 0 writes the harness's ``OUT/harness_results.json`` and ``OUT/harness_summary.json`` (default OUT:
    ``evals/<name of MODEL>``) and gets the summary, {task: metrics} in its "results".

    ``gpt2lab eval harness`` takes these arguments as its options (``--help`` shows this text).

    Args:
        model_path: checkpoint folder, run folder, or a Hugging Face GPT-2 folder or hub name
        tasks: harness tasks (comma-separated on the command line), e.g.
            hellaswag,lambada_openai,piqa,arc_easy,winogrande
        data: TASK=FILE, a local copy of a task's data (one for each task read from a file: repeat --data)
        out: folder for the result files (default: evals/<name of MODEL>)
        device: auto, cpu, cuda or cuda:N
        dtype: autocast dtype (auto: bfloat16 where the hardware has it)
        limit: score only the first N documents of each task (0: all)
        num_fewshot: few-shot examples (default: the task's)
        include_path: a folder of your own task YAMLs
        batch_tokens: tokens per forward batch
        tokenizer: gpt2 or a tokenizer folder (gpt2lab tokenizer train); default: the model's own (a checkpoint's
            copy, else gpt2); one that differs from the model's recorded tokenizer is an error
    """
    local = parse_data(data, tasks)
    manager = _task_manager(include_path, tasks)
    out_dir = results_folder(out, model_path)
    info = init_distributed(device)
    try:
        model = load_pretrained(model_path, info.device)
        lm = GPT2LabLM(model, info.device, autocast_for(info.device, resolve_dtype(dtype, info.device)), info,
                       batch_tokens, model_tokenizer(model_path, model.config, tokenizer))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with tempfile.TemporaryDirectory(prefix="gpt2lab-tasks-") as folder:  # one per process: no races
            specs = local_tasks(manager, local, Path(folder))
            results = _evaluate(lm, [specs.get(t, t) for t in tasks], manager, tasks, local, limit=limit or None,
                                num_fewshot=num_fewshot)
        if not info.is_main or results is None:
            return {}
        write_atomic(out_dir / "harness_results.json",
                     json.dumps(results, indent=2, default=lm_utils.handle_non_serializable) + "\n")
        summary = {"task": "harness", "model": str(model_path),
                   "dtype": str(resolve_dtype(dtype, info.device)).replace("torch.", ""),
                   "world_size": info.world_size, "out": str(out_dir)}
        if local:
            summary["data"] = {t: str(f) for t, f in local.items()}
        summary["results"] = {t: {k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "alias"}
                              for t, m in results["results"].items()}
        write_json_atomic(out_dir / "harness_summary.json", summary)
        return summary
    finally:
        shutdown(info)
