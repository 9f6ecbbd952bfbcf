"""Helpers shared by the evaluations: dataset cache and download, the command runner, result files."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..device import autocast_for, resolve_dtype
from ..distributed import init_distributed, shutdown
from ..errors import UserError
from ..fileio import check_folder_path, file_sha256, temp_beside, write_json_atomic, write_jsonl_atomic
from ..weights import load_pretrained, model_tokenizer


def cache_dir() -> Path:
    """Where downloaded evaluation data lives: $GPT2LAB_CACHE, else ~/.cache/gpt2lab."""
    return Path(os.environ.get("GPT2LAB_CACHE") or Path.home() / ".cache" / "gpt2lab")


def download(urls: list[str] | str, dest: Path, sha256: dict[str, str] | None = None, what: str = "data",
             timeout: float = 30, option: str = "--data PATH") -> Path:
    """Fetch the first reachable URL into ``dest`` (atomically), checking ``sha256[url]`` where given.

    Raises UserError naming every URL tried and the offline fix: a local copy given as ``option``, as the
    command at hand takes one (``--data PATH``; ``eval.hellaswag_data=PATH`` in training).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    sha256 = sha256 or {}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for url in urls:
        fd, tmp = temp_beside(dest)
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, f)
                size, announced = f.tell(), r.headers.get("Content-Length")
            # a connection dropped half way ends the body early without an error: the file would be a silent subset
            if announced is not None and announced.isdigit() and size != int(announced):
                problems.append(f"{url}: cut off after {size:,} of {int(announced):,} bytes")
                continue
            if url in sha256 and file_sha256(Path(tmp)) != sha256[url]:
                problems.append(f"{url}: checksum mismatch")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:
            problems.append(f"{url}: {getattr(e, 'reason', e)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise UserError(f"cannot download {what} to {dest} ({'; '.join(problems)}); download it yourself and pass "
                    f"it as {option}")


def read_jsonl(path: Path, what: str, option: str = "--data PATH") -> list[dict]:
    """Objects of a jsonl file; UserError with the file and line for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what} file; check the path given as {option}")
    records = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {n}: not valid JSON ({e.msg}); is this a {what} jsonl "
                                    "file?") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path} line {n}: expected a JSON object; is this a {what} jsonl file?")
                records.append(obj)
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text; is this a {what} jsonl file?") from None
    if not records:
        raise UserError(f"{path}: empty {what} file")
    return records



def gather_records(records: list, info) -> list:
    """Every rank's records, concatenated in rank order (rank 0 uses them; small, from our own processes)."""
    if not info.enabled:
        return list(records)
    import torch.distributed as dist

    parts = [None] * info.world_size
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]


def results_folder(out, model_path) -> Path:
    """Where an evaluation writes its result files: ``out``, else ``evals/<name of the model folder>``;
    checked before any scoring, so a file in the way is a one-line error, not a loss of the work."""
    folder = Path(out) if out else Path("evals") / Path(str(model_path)).resolve().name
    check_folder_path(folder, "--out")
    return folder


def run_task(task: str, model_path, load, score, *, data_label: str, out=None, device: str = "auto",
             dtype: str = "auto", plain: bool = False, definitions: dict | None = None, tokenizer=None) -> dict:
    """The body of ``gpt2lab eval hellaswag|lambada``: load data then model, score, write the files.

    ``load()`` returns the task's data; ``score(model, data, info, autocast, tokenizer)`` returns (metrics,
    records), with the model's tokenizer (weights.model_tokenizer; ``tokenizer``, --tokenizer, must be the same).
    Under torchrun every rank scores its share; rank 0 writes ``OUT/<task>_examples.jsonl``
    and ``OUT/<task>_summary.json`` (default OUT: ``evals/<name of the model folder>``).
    """
    out_dir = results_folder(out, model_path)
    info = init_distributed(device)
    try:
        data = load()  # data problems first: quicker to report than a model load
        model = load_pretrained(model_path, info.device)
        tok = model_tokenizer(model_path, model.config, tokenizer)
        dt = resolve_dtype(dtype, info.device)
        autocast = autocast_for(info.device, dt)
        t0 = time.perf_counter()
        metrics, records = score(model, data, info, autocast, tok)
        seconds = time.perf_counter() - t0
        summary = {
            "task": task, "model": str(model_path), "data": data_label, "tokenizer": tok.spec, **metrics,
            "dtype": str(dt).replace("torch.", ""), "world_size": info.world_size,
            "scorer": "plain" if plain else "fast", "seconds": round(seconds, 3),
            "items_per_s": round(metrics["items"] / seconds, 3) if seconds > 0 else None,
            "definitions": {k: v for k, v in (definitions or {}).items() if k in metrics},
        }
        if info.is_main:
            write_jsonl_atomic(out_dir / f"{task}_examples.jsonl", records)
            write_json_atomic(out_dir / f"{task}_summary.json", summary)
            summary["out"] = str(out_dir)
        return summary
    finally:
        shutdown(info)


def select_items(items: list, n: int) -> list:
    """A fixed subset of n items spread evenly over the file (all items when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]
