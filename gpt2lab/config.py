"""Configuration: dataclasses, named model presets, YAML files and ``key=value`` overrides.

A config has five sections. In YAML::

    model: {preset: gpt2, dropout: 0.0}   # or just `model: gpt2`
    data:  {dir: data/fineweb-edu-10B}
    train: {micro_batch: 64, seq_len: 1024, total_batch_tokens: 524288, max_steps: 19073}
    optim: {lr: 6.0e-4, warmup_steps: 715}
    eval:  {every: 250}

On the command line, ``section.key=value`` (``optim.lr=3e-4``) or just ``key=value`` when the
key names one field in one section (``lr=3e-4``). Values are parsed as YAML scalars. Unknown
keys and bad values raise :class:`~gpt2lab.errors.UserError` with the key and the fix.
Every field is documented in docs/config.md (generated from the comments here by
``gpt2lab config --doc``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field, fields

import yaml

from .errors import UserError
from .model import GPTConfig

# Named model sizes. The four GPT-2 sizes are OpenAI's; the small ones are for CPUs and tests.
MODEL_PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # ~30M, trains on a laptop CPU
    "mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),  # ~16M, the quickstart model
    "micro": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),  # ~3M, for tests
}


@dataclass
class DataConfig:
    dir: str = "data/tinyshakespeare"  # folder of token shards made by `gpt2lab prepare`
    train_split: str = "train"  # shards whose name holds this word are training data
    val_split: str = "val"  # ... and these validation data
    shuffle: bool = False  # permute the shard order and the sequences within each shard, anew each epoch (from train.seed)
    verify: bool = True  # check shards against the folder's manifest.json (sizes and sha256) before training


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # checkpoints, metrics.jsonl and config.yaml go here
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    dtype: str = "auto"  # autocast dtype: auto (bfloat16 where the hardware has it, else float32), bfloat16, float32
    compile: bool = False  # torch.compile the training forward/backward
    init_from: str = ""  # start from these weights: a gpt2lab checkpoint or run folder, or a Hugging Face GPT-2 folder or hub name; the model shape then comes from there (model.dropout stays yours)
    seed: int = 1337
    micro_batch: int = 16  # sequences per forward/backward on each process
    seq_len: int = 0  # tokens per sequence (0 = model.block_size)
    total_batch_tokens: int = 0  # tokens per optimizer step; 0 = one micro-batch on every process
    max_steps: int = 1000  # optimizer steps in the whole run
    log_every: int = 1  # progress line and metrics every N steps
    ckpt_every: int = 0  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2  # keep the newest N checkpoints (0 = keep all)
    deterministic: bool = False  # deterministic algorithms (bitwise-reproducible resume on CPU)
    threads: int = 0  # torch CPU threads (0 = PyTorch's default)
    tensorboard: bool = False  # also write TensorBoard events to run_dir/tb (needs tensorboard)
    parallel: str = "ddp"  # with several processes (torchrun): ddp (a full copy per process) or fsdp (FSDP2: weights, gradients and optimizer state sharded; for the larger sizes)
    dist_timeout: int = 600  # seconds a process waits for the others in a collective before the job stops with an error (a dead or hung rank)


@dataclass
class OptimConfig:
    lr: float = 6e-4  # peak learning rate, reached after warmup
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 715  # linear warmup from lr/warmup_steps
    schedule: str = "cosine"  # cosine, linear or constant (after warmup)
    weight_decay: float = 0.1  # applied to 2-D weights only (not biases, LayerNorms)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # clip the global gradient norm (0 = off)
    fused: str = "auto"  # auto (fused AdamW where available), true, false


@dataclass
class EvalConfig:
    every: int = 250  # validation loss every N steps (0 = only at the end; -1 = never)
    val_tokens: int = 10_485_760  # tokens of the validation split to score (capped by its size)
    val_batch: int = 0  # sequences per validation forward (0 = train.micro_batch)
    hellaswag_every: int = -1  # HellaSwag accuracy every N steps (0 = only at the end; -1 = never); logged as kind 'hellaswag'
    hellaswag_items: int = 0  # HellaSwag items per evaluation: 0 = all 10,042; N = a fixed subset of N spread evenly over the file
    hellaswag_data: str = ""  # local hellaswag_val.jsonl; "" = the cached official file (downloaded when missing)
    lambada_every: int = -1  # LAMBADA last-word accuracy and perplexity every N steps (0 = only at the end; -1 = never); logged as kind 'lambada'
    lambada_items: int = 0  # LAMBADA passages per evaluation: 0 = all; N = a fixed subset of N spread evenly over the file
    lambada_data: str = ""  # local LAMBADA file (jsonl with 'text', or one passage per line); "" = the cached lambada_openai (downloaded when missing)
    sample_every: int = 0  # print samples every N steps (0 = only at the end; -1 = never)
    sample_prompt: str = "Hello, I'm a language model,"
    sample_count: int = 4
    sample_tokens: int = 32
    sample_temperature: float = 1.0
    sample_top_k: int = 50


@dataclass
class Config:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {"model": GPTConfig, "data": DataConfig, "train": TrainConfig, "optim": OptimConfig, "eval": EvalConfig}


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(key: str, value, typ: type):
    """Convert a YAML value to the field's type, or raise a UserError naming the key."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif typ is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, float) and value.is_integer():
            return int(value)  # 5e5 in YAML is a float
        elif isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else _bad(key, value, typ)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 6e-4 (no dot) as a string
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    return _bad(key, value, typ)


def _bad(key, value, typ):
    raise UserError(f"config key '{key}': expected {typ.__name__}, got {value!r}")


def _unknown(key: str, choices: typing.Iterable[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, list(choices), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UserError(f"unknown config key '{key}'{where}{hint}; see docs/config.md for the options")


def _resolve_model(raw, where: str) -> dict:
    """Expand ``model: NAME`` or ``model: {preset: NAME, ...}`` into explicit fields."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"preset": raw}
    if not isinstance(raw, dict):
        raise UserError(f"config key 'model'{where}: expected a preset name or a mapping, got {raw!r}")
    raw = dict(raw)
    preset = raw.pop("preset", None)
    if preset is None:
        return raw
    if preset not in MODEL_PRESETS:
        raise UserError(f"unknown model preset {preset!r}{where}; choose one of: {', '.join(MODEL_PRESETS)}")
    return {**MODEL_PRESETS[preset], **raw}


def _merge(base: dict, raw: dict, where: str) -> None:
    """Merge one YAML document (or the overrides) into ``base`` (section -> {key: value})."""
    if not isinstance(raw, dict):
        raise UserError(f"config{where} must be a mapping of sections ({', '.join(SECTIONS)})")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise _unknown(str(section), SECTIONS, where)
        if section == "model":
            values = _resolve_model(values, where)
        elif values is None:
            continue
        elif not isinstance(values, dict):
            raise UserError(f"config section '{section}'{where} must be a mapping, got {values!r}")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            if key not in types:
                raise _unknown(f"{section}.{key}", [f"{section}.{k}" for k in types], where)
            base.setdefault(section, {})[key] = _coerce(f"{section}.{key}", value, types[key])


def parse_override(text: str) -> tuple[str, str, object]:
    """``optim.lr=3e-4`` or ``lr=3e-4`` -> ("optim", "lr", 0.0003)."""
    if "=" not in text:
        raise UserError(f"bad override {text!r}: write key=value, e.g. optim.lr=3e-4")
    key, _, value_text = text.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    value = yaml.safe_load(value_text) if value_text.strip() else ""
    if "." in key:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise _unknown(key, [f"{s}.{k}" for s in SECTIONS for k in _field_types(SECTIONS[s])], "")
        return section, name, value
    owners = [s for s in SECTIONS if key in _field_types(SECTIONS[s])]
    if key == "preset":
        owners = ["model"]
    if len(owners) == 1:
        return owners[0], key, value
    if len(owners) > 1:
        raise UserError(f"config key '{key}' is ambiguous: write one of {', '.join(f'{s}.{key}' for s in owners)}")
    raise _unknown(key, [k for s in SECTIONS for k in _field_types(SECTIONS[s])], "")


def load_config(path: str | os.PathLike | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a validated Config from defaults, then a YAML file, then ``key=value`` overrides."""
    merged: dict[str, dict] = {}
    if path is not None:
        path = os.fspath(path)
        try:
            with open(path) as f:
                raw = yaml.safe_load(f)
        except FileNotFoundError:
            raise UserError(f"config file {path} not found") from None
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        _merge(merged, raw or {}, f" in {path}")
    cli: dict[str, dict] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        cli.setdefault(section, {})[key] = value
    # A preset on the command line replaces the file's architecture (the keys presets set); the
    # file's other model keys (dropout, vocab sizes, bias) and command-line overrides still apply.
    if "preset" in cli.get("model", {}):
        file_model = merged.get("model", {})
        for key in {"preset"}.union(*(p.keys() for p in MODEL_PRESETS.values())):
            file_model.pop(key, None)
    _merge(merged, cli, " on the command line")
    return from_dict(merged)


def from_dict(raw: dict, where: str = "") -> Config:
    """Build and validate a Config from a {section: {key: value}} mapping (e.g. a saved config);
    ``where`` (e.g. " in runs/a/config.yaml") goes into the error messages."""
    merged: dict[str, dict] = {}
    _merge(merged, raw, where)
    cfg = Config(**{s: SECTIONS[s](**merged.get(s, {})) for s in SECTIONS})
    if cfg.train.seq_len == 0:
        cfg.train.seq_len = cfg.model.block_size
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check values and their relations; raise UserError naming the key and what to do."""
    m, t, o, e = cfg.model, cfg.train, cfg.optim, cfg.eval

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise UserError(f"config key '{key}': {msg}")

    for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
        need(getattr(m, key) > 0, f"model.{key}", "must be > 0")
    need(m.n_embd % m.n_head == 0, "model.n_embd", f"{m.n_embd} is not divisible by model.n_head={m.n_head}")
    need(m.padded_vocab_size >= m.vocab_size, "model.padded_vocab_size", f"must be >= model.vocab_size ({m.vocab_size})")
    need(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    need(t.micro_batch > 0, "train.micro_batch", "must be > 0")
    need(t.seq_len > 0, "train.seq_len", "must be > 0")
    need(t.seq_len <= m.block_size, "train.seq_len", f"{t.seq_len} is longer than model.block_size={m.block_size}")
    need(t.total_batch_tokens >= 0, "train.total_batch_tokens", "must be >= 0")
    need(t.max_steps > 0, "train.max_steps", "must be > 0")
    need(t.log_every > 0, "train.log_every", "must be > 0")
    need(t.ckpt_every >= 0, "train.ckpt_every", "must be >= 0")
    need(t.keep_checkpoints >= 0, "train.keep_checkpoints", "must be >= 0")
    need(t.dtype in ("auto", "bfloat16", "float32"), "train.dtype", "choose auto, bfloat16 or float32")
    need(t.parallel in ("ddp", "fsdp"), "train.parallel", "choose ddp or fsdp")
    need(t.dist_timeout > 0, "train.dist_timeout", "must be > 0 seconds")
    need(t.threads >= 0, "train.threads", "must be >= 0 (0 = PyTorch's default)")
    need(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device", "choose auto, cpu, cuda or cuda:N")
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    need(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(o.schedule in ("cosine", "linear", "constant"), "optim.schedule", "choose cosine, linear or constant")
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(0 <= o.beta1 < 1, "optim.beta1", "must be in [0, 1)")
    need(0 <= o.beta2 < 1, "optim.beta2", "must be in [0, 1)")
    need(o.eps > 0, "optim.eps", "must be > 0")
    need(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 turns clipping off)")
    need(o.fused in ("auto", "true", "false", "True", "False"), "optim.fused", "choose auto, true or false")
    need(e.val_tokens > 0, "eval.val_tokens", "must be > 0")
    need(e.val_batch >= 0, "eval.val_batch", "must be >= 0")
    need(e.hellaswag_every >= -1, "eval.hellaswag_every", "must be >= -1 (-1 = never, 0 = only at the end)")
    need(e.hellaswag_items >= 0, "eval.hellaswag_items", "must be >= 0 (0 = all items)")
    need(e.lambada_every >= -1, "eval.lambada_every", "must be >= -1 (-1 = never, 0 = only at the end)")
    need(e.lambada_items >= 0, "eval.lambada_items", "must be >= 0 (0 = all passages)")
    need(e.sample_count > 0, "eval.sample_count", "must be > 0")
    need(e.sample_tokens > 0, "eval.sample_tokens", "must be > 0")
    need(e.sample_temperature >= 0, "eval.sample_temperature", "must be >= 0 (0 = greedy)")
    need(e.sample_top_k >= 0, "eval.sample_top_k", "must be >= 0 (0 = no top-k)")
    for key in ("every", "sample_every"):
        need(getattr(e, key) >= -1, f"eval.{key}", "must be >= -1 (-1 = never, 0 = only at the end)")


def config_doc() -> str:
    """Markdown reference of every config key, taken from the comments in this file."""
    import inspect
    import re

    model_src = inspect.getsource(GPTConfig)
    lines = ["# Configuration reference", "", "Generated by `gpt2lab config --doc` from gpt2lab/config.py.", ""]
    for section, cls in SECTIONS.items():
        text = model_src if cls is GPTConfig else inspect.getsource(cls)
        lines += [f"## `{section}`", "", "| key | default | meaning |", "|---|---|---|"]
        if section == "model":
            lines.append(f"| `preset` | - | one of {', '.join(f'`{p}`' for p in MODEL_PRESETS)}; other model keys override it |")
        for f in fields(cls):
            m = re.search(rf"^\s+{f.name}: [^=]+= (.+?)(?:\s+#\s*(.*))?$", text, re.M)
            default = f.default if f.default is not dataclasses.MISSING else ""
            lines.append(f"| `{section}.{f.name}` | `{default!r}` | {(m.group(2) or '') if m else ''} |")
        lines.append("")
    lines += ["## Model presets", "", "| preset | n_layer | n_head | n_embd | block_size |", "|---|---|---|---|---|"]
    for name, p in MODEL_PRESETS.items():
        lines.append(f"| `{name}` | {p['n_layer']} | {p['n_head']} | {p['n_embd']} | {p.get('block_size', 1024)} |")
    return "\n".join(lines) + "\n"
