"""Generated bad input (hypothesis): config files and overrides, manifests, shard headers, training
states, HellaSwag/LAMBADA files and metrics.jsonl. Every input either works or ends in one
``UserError`` (the CLI prints it as one ``error:`` line and exits 2), never another exception, and
nothing half-written is left behind."""

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import micro_cfg, quiet
from gpt2lab import checkpoint as ckpt
from gpt2lab import layout
from gpt2lab.cli import main
from gpt2lab.config import SECTIONS, load_config
from gpt2lab.data.loader import TokenLoader, check_shards
from gpt2lab.data.shards import HEADER_BYTES, read_shard
from gpt2lab.distributed import DistInfo
from gpt2lab.errors import UserError
from gpt2lab.evals.hellaswag import load_hellaswag
from gpt2lab.evals.lambada import load_lambada
from gpt2lab.evals.report import eval_history, format_history
from gpt2lab.metrics import read_metrics
from gpt2lab.model import GPT
from gpt2lab.optim import build_optimizer
from gpt2lab.train import train

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

KEYS = [f"{s}.{k}" for s, cls in SECTIONS.items() for k in cls.__dataclass_fields__] + ["model.preset", "x.y", "lr"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def only_user_errors(fn, *args, **kwargs):
    """Run fn; a UserError is a fine answer (one line), anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        assert "\n" not in str(e), str(e)
        return None


def no_partial_files(folder: Path):
    assert not [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


# --- config files and overrides -------------------------------------------------------------


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(list(SECTIONS) + ["other"]),
                           st.dictionaries(st.sampled_from(sorted({k.split(".")[-1] for k in KEYS})), json_values,
                                           max_size=4) | json_values, max_size=4)
       | json_values,
       raw=st.binary(max_size=60))
def test_config_files(tmp_path_factory, doc, raw):
    folder = tmp_path_factory.mktemp("cfg")
    for i, data in enumerate([yaml.safe_dump(doc).encode(), raw]):
        path = folder / f"c{i}.yaml"
        path.write_bytes(data)
        only_user_errors(load_config, path)
    no_partial_files(folder)


@FUZZ
@given(key=st.sampled_from(KEYS), value=st.text(alphabet=string.printable + "é€\u2028", max_size=30))
def test_overrides(key, value):
    only_user_errors(load_config, None, [f"{key}={value}"])


def test_overrides_through_the_command(capsys):
    """The same path as a user: one line on stderr and exit 2, or a config printed."""
    for override in ["train.seed=!!python/object/apply:os.system [true]", "optim.lr=[1, 2]", "model.n_layer=-1",
                     "train.device=tpu", "data.dir: x", "=", "model.preset={a: 1}"]:
        rc = main(["train", override, "--print-config"])
        out, err = capsys.readouterr()
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (override, rc, err)


# --- manifests and shard headers ------------------------------------------------------------


@pytest.fixture(scope="module")
def shards_copy(small_shards, tmp_path_factory):
    dst = tmp_path_factory.mktemp("fz") / "data"
    shutil.copytree(small_shards, dst)
    return dst


@FUZZ
@given(field=st.sampled_from(["shards", "vocab_size", "tokenizer", "tokens", None]), value=json_values,
       entry_field=st.sampled_from(["name", "tokens", "sha256", "split"]), entry_value=json_values)
def test_manifests(shards_copy, small_shards, field, value, entry_field, entry_value):
    manifest = json.loads((small_shards / "manifest.json").read_text())
    if field is None:
        manifest = value
    else:
        manifest[field] = value
        if field != "shards":
            manifest["shards"][0][entry_field] = entry_value
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    only_user_errors(TokenLoader, shards_copy, "train", 2, 16)
    only_user_errors(check_shards, shards_copy, sorted(shards_copy.glob("val_*.bin")))
    no_partial_files(shards_copy)


@FUZZ
@given(header=st.lists(st.integers(-2**31, 2**31 - 1), min_size=3, max_size=3),
       cut=st.integers(0, 4096), raw=st.booleans())
def test_shard_headers(small_shards, tmp_path_factory, header, cut, raw):
    src = next(small_shards.glob("val_*.bin")).read_bytes()
    head = np.frombuffer(src[:HEADER_BYTES], dtype="<i4").copy()
    if raw:
        head[:3] = header
    else:  # keep the magic, vary the version and token count
        head[1:3] = header[1:]
    path = tmp_path_factory.mktemp("sh") / "val_000000.bin"
    path.write_bytes(head.tobytes() + src[HEADER_BYTES:][: len(src) - cut])
    tokens = only_user_errors(read_shard, path)
    if tokens is not None:
        assert len(tokens) == int(head[2])


# --- training states ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_run(small_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("st") / "run"
    cfg = micro_cfg(small_shards, run, "train.max_steps=1", "train.ckpt_every=1", "eval.every=-1",
                    "eval.sample_every=-1")
    train(cfg, log=quiet)
    folder = ckpt.list_checkpoints(run)[-1]
    return cfg, folder, torch.load(folder / layout.STATE_FILE, weights_only=True)


STATE_KEYS = ["step", "loader", "rng", "world_size", "parallel", "optimizer"]
tensors = st.sampled_from([torch.zeros(3), torch.zeros(0, dtype=torch.uint8), torch.ones(2, 2, dtype=torch.int64),
                           torch.full((4,), float("nan"))])


@settings(FUZZ, max_examples=25)  # each example builds a model and restores into it
@given(key=st.sampled_from(STATE_KEYS), value=json_values | tensors,
       sub=st.sampled_from(["param_groups", "state", "epoch", "sequence", "seq_len", None]), sub_value=json_values)
def test_training_states(state_run, key, value, sub, sub_value):
    cfg, folder, good = state_run
    state = dict(good)
    state["optimizer"] = dict(good["optimizer"])
    state["loader"] = dict(good["loader"])
    if sub in ("param_groups", "state"):
        state["optimizer"][sub] = sub_value
    elif sub is not None:
        state["loader"][sub] = sub_value
    else:
        state[key] = value
    run = folder.parent.parent  # one run for all examples: each writes its state (checksums anew, as crafted)
    torch.save(state, folder / layout.STATE_FILE)
    ckpt.write_checksums(folder)
    model = GPT(cfg.model)
    optimizer = build_optimizer(model, cfg.optim, "cpu")
    loader = TokenLoader(cfg.data.dir, "train", cfg.train.micro_batch, cfg.train.seq_len)
    restorer = ckpt.Checkpointer(run, DistInfo(device="cpu"))
    only_user_errors(restorer.restore, cfg, model, optimizer, loader, quiet)
    no_partial_files(run)


# --- evaluation files and metrics -----------------------------------------------------------


@FUZZ
@given(lines=st.lists(json_values.map(json.dumps) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                      max_size=4),
       item=st.fixed_dictionaries({"ctx": json_values | st.text(max_size=10), "endings": json_values,
                                   "label": json_values}))
def test_hellaswag_and_lambada_files(tmp_path_factory, lines, item):
    folder = tmp_path_factory.mktemp("ev")
    for name in ("h.jsonl", "l.jsonl", "l.txt"):
        path = folder / name
        path.write_text("\n".join([json.dumps(item), *lines]) + "\n", encoding="utf-8", errors="surrogatepass")
        only_user_errors(load_hellaswag, path) if name.startswith("h") else only_user_errors(load_lambada, path)


@FUZZ
@given(lines=st.lists(st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()), max_size=6))
def test_metrics_files(tmp_path_factory, lines):
    run = tmp_path_factory.mktemp("m")
    good = b'{"kind": "val", "step": 2, "val_loss": 3.5}\n'
    (run / "metrics.jsonl").write_bytes(good + b"\n".join(lines) + b"\n")
    bad: list[int] = []
    records = read_metrics(run, bad_lines=bad)
    assert records[0] == json.loads(good)
    rows = eval_history(run, bad)
    assert isinstance(format_history(rows), str)
