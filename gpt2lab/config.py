"""Configuration: typed sections, named model presets, YAML files and ``key=value`` overrides.

A config has five sections. In YAML::

    model: {preset: gpt2, dropout: 0.0}   # or just `model: gpt2`
    data:  {dir: data/fineweb-edu-10B}
    train: {micro_batch: 64, seq_len: 1024, total_batch_tokens: 524288, max_steps: 19073}
    optim: {lr: 6.0e-4, warmup_steps: 715}
    eval:  {every: 250}

On the command line, ``section.key=value`` (``optim.lr=3e-4``) or just ``key=value`` when the
key names one field in one section (``lr=3e-4``). Values are parsed as YAML scalars.

Each section is a pydantic dataclass: a field's type, limits and description sit on the field,
and pydantic converts and checks the values. This module merges the file and the command line,
and turns pydantic's first error into a one-line :class:`~gpt2lab.errors.UserError` naming the
key, where it was set, and the fix. docs/config.md is generated from the field descriptions by
``gpt2lab config --doc``. The model section, :class:`ModelConfig`, is made from the fields of
:class:`~gpt2lab.model.GPTConfig` (a plain dataclass whose field metadata hold each description and
limit: a model switch is added in model.py alone); it is checked here and handed to the model as a
GPTConfig. model.py knows nothing of config files.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as section
from pydantic_core import PydanticCustomError

from .data.shards import data_tokenizer
from .errors import UserError
from .model import GPTConfig
from .tokenizer import VOCAB_SIZE, load_tokenizer, pad_vocab

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


MAX_SEED = 2**63 - 1  # train.seed's largest value (see TrainConfig.seed)

# Scalar types: pydantic's strict types behind a small conversion of what YAML hands over. Lax
# pydantic would take `true` as 1 for an int or a float, yet refuse "5e5" for an int.
def _to_int(v):
    """YAML reads 5e5 as a float, or (no dot) as a string: an integral number is an int."""
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                return v
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _to_float(v):
    """YAML 1.1 reads 6e-4 (no dot) as a string; an int is a float too. Booleans are not numbers."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _to_str(v):
    """A YAML number is its text (``sample_prompt: 123``); an empty YAML value is the empty string."""
    if v is None:
        return ""
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


Int = Annotated[StrictInt, BeforeValidator(_to_int)]
Float = Annotated[StrictFloat, BeforeValidator(_to_float)]
Str = Annotated[StrictStr, BeforeValidator(_to_str)]
# bool stays pydantic's lax bool: true/false, yes/no, on/off, 1/0 in any case.

# validate_default: the checks between fields (n_embd % n_head) also run when one of them is a default.
_SECTION = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


def _relation_error(key: str, msg: str) -> PydanticCustomError:
    """An error about two keys, raised where pydantic's location would name only the section."""
    return PydanticCustomError("config", "{msg}", {"key": key, "msg": msg})


class _ModelRelations:
    """The checks between model keys (ModelConfig's base class). info.data holds the fields above
    the checked one that passed; a relation with a bad field is skipped."""

    @field_validator("padded_vocab_size")
    @classmethod
    def _covers_vocab(cls, v, info):
        vocab = info.data.get("vocab_size")
        if vocab is not None and v and v < vocab:
            raise ValueError(f"{v} is smaller than model.vocab_size={vocab}; make it >= vocab_size")
        return v

    @field_validator("n_embd")
    @classmethod
    def _splits_into_heads(cls, v, info):
        heads = info.data.get("n_head")
        if heads and v % heads:
            raise ValueError(f"{v} is not divisible by model.n_head={heads}")
        return v

    @field_validator("rotary")
    @classmethod
    def _even_head_dim(cls, v, info):
        heads, width = info.data.get("n_head"), info.data.get("n_embd")
        if v and heads and width and (width // heads) % 2:
            raise ValueError(f"rotary embeddings turn pairs of a head's dimensions: the head dimension n_embd / n_head "
                             f"= {width // heads} must be even")
        return v

    @field_validator("value_embeds")
    @classmethod
    def _tables_fit_blocks(cls, v, info):
        layers = info.data.get("n_layer")
        if layers and v > layers:
            raise ValueError(f"{v} tables are more than the model.n_layer={layers} blocks (table j serves blocks j and "
                             "n_layer - N + j); use at most n_layer, n_layer // 2 to give each block one table")
        return v


# Config-only defaults: a vocabulary size of 0, the default, comes from data.tokenizer (see _build).
_FROM_TOKENIZER = {
    "vocab_size": "0 = the tokenizer's, data.tokenizer: 50257 for gpt2",
    "padded_vocab_size": "0 = vocab_size rounded up to a multiple of 64: 50304 for gpt2",
}
# GPTConfig's scalar types as config keys take them (bool and Literal types stay as they are).
_KEY_TYPES = {int: Int, float: Float, str: Str}


def _model_section(model_cls: type) -> type:
    """The model section made from ``model_cls`` (GPTConfig): its fields, in order, each with the description
    and limits in its metadata (model.py), as a pydantic dataclass with :class:`_ModelRelations`' checks."""
    types_ = typing.get_type_hints(model_cls)
    namespace: dict = {"__annotations__": {}, "__module__": __name__, "__qualname__": "ModelConfig",
                       "__doc__": "The model section as config files have it; the model gets it as a GPTConfig."}
    for f in dataclasses.fields(model_cls):
        default, meta = f.default, dict(f.metadata)
        if f.name in _FROM_TOKENIZER:
            default, meta = 0, dict(description=f"{meta['description']} ({_FROM_TOKENIZER[f.name]})", ge=0,
                                    examples=[0])
        namespace["__annotations__"][f.name] = _KEY_TYPES.get(types_[f.name], types_[f.name])
        namespace[f.name] = Field(default, **meta)
    return section(config=_SECTION)(type("ModelConfig", (_ModelRelations,), namespace))


ModelConfig = _model_section(GPTConfig)


@section(config=_SECTION)
class DataConfig:
    dir: Str = Field("data/tinyshakespeare", description="folder of token shards made by `gpt2lab prepare`")
    tokenizer: Str = Field("gpt2", examples=["gpt2"], description=(
        "gpt2 or a tokenizer folder made by `gpt2lab tokenizer train`. Not given (or \"\"): the one data.dir was "
        "prepared with, as its manifest records (gpt2 when there is none); one given that differs from the data's "
        "is an error. Checkpoints keep a copy, and sampling and evaluation use it"))
    train_split: Str = Field("train", description="shards whose name holds this word are training data")
    val_split: Str = Field("val", description="... and these validation data")
    shuffle: bool = Field(False, description=(
        "permute the shard order and the sequences within each shard, anew each epoch (from train.seed)"))
    verify: bool = Field(True, description=(
        "check the training and validation shards against the folder's manifest.json (sizes and sha256) before using "
        "them"))
    align_docs: bool = Field(False, description=(
        "every training row starts at a document's start (its EOT token): the documents after it fill the row as they "
        "come, the last one cut at the row's end (its rest is skipped), and the next row starts at the next document; "
        "validation keeps its fixed windows"))


@section(config=_SECTION)
class TrainConfig:
    run_dir: Str = Field("runs/default", description="checkpoints, metrics.jsonl and config.yaml go here")
    device: Str = Field("auto", examples=["cpu", "cuda", "cuda:0", "cuda:1"], description=(
        "auto (cuda if available, else cpu), cpu, cuda, cuda:N"))
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description=(
        "autocast dtype: auto (bfloat16 where the hardware has it, else float32), bfloat16, float32"))
    compile: bool = Field(False, description="torch.compile the training forward/backward")
    init_from: Str = Field("", description=(
        "start from these weights: a gpt2lab checkpoint or run folder, or a Hugging Face GPT-2 folder or hub name; the "
        "model shape then comes from there (model.dropout stays yours)"))
    # torch seeds take up to 2^64 - 1 and numpy's no negative ones; a process adds its rank to the seed
    seed: Int = Field(1337, ge=0, le=MAX_SEED, description="random seed of the weights, the data order and dropout")
    micro_batch: Int = Field(16, gt=0, description="sequences per forward/backward on each process")
    seq_len: Int = Field(0, ge=0, description="tokens per sequence (0 = model.block_size)", examples=[0])
    total_batch_tokens: Int = Field(0, ge=0, examples=[0], description=(
        "tokens per optimizer step; 0 = one micro-batch on every process"))
    max_steps: Int = Field(1000, gt=0, description="optimizer steps in the whole run")
    log_every: Int = Field(1, gt=0, description="progress line and metrics every N steps")
    ckpt_every: Int = Field(0, ge=0, description="checkpoint every N steps (0 = only at the end)", examples=[0])
    keep_checkpoints: Int = Field(2, ge=0, description="keep the newest N checkpoints (0 = keep all)", examples=[0])
    loss_chunk: Int = Field(0, ge=0, examples=[0], description=(
        "rows of logits at a time in the training loss: 0 = the whole B x T x vocab logits at once (as GPT-2 code "
        "does); N > 0 = a fused, chunked LM head and cross-entropy that never holds them (the same loss within bf16 "
        "rounding, much less memory, faster on CPUs)"))
    seq_len_warmup_steps: Int = Field(0, ge=0, examples=[0], description=(
        "sequence-length warm-up: over the first N steps each row of seq_len tokens is cut into shorter sequences, "
        "seq_len / 2^k long (k falling in equal shares of the N steps), the same tokens per step; 0 = off"))
    seq_len_warmup_min: Int = Field(64, gt=0, description=(
        "seq_len_warmup_steps: the shortest length (seq_len is halved while it divides evenly and stays >= this)"))
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise-reproducible resume on CPU)")
    threads: Int = Field(0, ge=0, description="torch CPU threads (0 = PyTorch's default)", examples=[0])
    tensorboard: bool = Field(False, description="also write TensorBoard events to run_dir/tb (needs tensorboard)")
    wandb_project: Str = Field("", description=(
        'also log to Weights & Biases under this project (needs wandb); "" = off'))
    wandb_name: Str = Field("", description='the wandb run name ("" = the name of run_dir)')
    wandb_mode: Literal["online", "offline"] = Field("online", description=(
        "online (needs `wandb login`) or offline (writes run_dir/wandb only; upload later with `wandb sync`)"))
    progress: Literal["auto", "bar", "lines"] = Field("auto", description=(
        "rank 0's status: auto (a live line when stdout is a terminal, plain lines otherwise), bar, or lines"))
    peak_tflops: Float = Field(0.0, ge=0, examples=[0.0], description=(
        "peak TFLOP/s of one device that MFU is stated against; 0 = a known GPU's dense bf16 datasheet figure, else a "
        "quick matmul measurement at start"))
    loss_spike: Float = Field(1.5, ge=0, examples=[0.0], description=(
        "log a loss_spike event when the loss exceeds this multiple of its mean over the last loss_spike_window steps "
        "(0 = off)"))
    loss_spike_window: Int = Field(50, gt=0, description="steps the loss_spike mean is taken over")
    skip_nonfinite: Int = Field(0, ge=0, examples=[0], description=(
        "0: a NaN/inf loss or gradient norm stops the run (its update is skipped); N: skip such steps without an "
        "update and go on, stopping at the (N+1)-th in a row"))
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description=(
        "with several processes (torchrun): ddp (a full copy per process) or fsdp (FSDP2: weights, gradients and "
        "optimizer state sharded; for the larger sizes)"))
    dist_timeout: Int = Field(600, gt=0, description=(
        "seconds a process waits for the others in a collective before the job stops with an error (a dead or hung "
        "rank)"))

    @field_validator("device")
    @classmethod
    def _is_device(cls, v):
        if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v):
            return v
        raise ValueError(f"{v!r} is not a device; choose auto, cpu, cuda or cuda:N")


@section(config=_SECTION)
class OptimConfig:
    lr: Float = Field(6e-4, gt=0, description=(
        "peak learning rate, reached after warmup (optimizer muon: of the AdamW groups without a learning rate of "
        "their own)"))
    min_lr_ratio: Float = Field(0.1, ge=0, le=1, description=(
        "the schedule decays to lr * min_lr_ratio at max_steps (every group: its own lr times this)"))
    warmup_steps: Int = Field(715, ge=0, description="linear warmup from lr/warmup_steps")
    schedule: Literal["cosine", "linear", "constant", "wsd"] = Field("cosine", description=(
        "after warmup: cosine, linear or constant; wsd (warmup-stable-decay): constant, then a linear decay over the "
        "last decay_fraction of the steps"))
    decay_fraction: Float = Field(0.2, gt=0, le=1, description=(
        "schedule wsd: the fraction of train.max_steps at the end that decays"))
    weight_decay: Float = Field(0.1, ge=0, description="applied to 2-D weights only (not biases, LayerNorms)")
    beta1: Float = Field(0.9, ge=0, lt=1, description="AdamW's first-moment decay")
    beta2: Float = Field(0.95, ge=0, lt=1, description="AdamW's second-moment decay")
    eps: Float = Field(1e-8, gt=0, description="AdamW's epsilon")
    grad_clip: Float = Field(1.0, ge=0, description="clip the global gradient norm (0 = off)", examples=[0.0])
    fused: Literal["auto"] | bool = Field("auto", description="auto (fused AdamW where available), true, false")
    optimizer: Literal["adamw", "muon"] = Field("adamw", description=(
        "adamw (GPT-2: AdamW for every parameter) or muon (Muon for the blocks' 2-D weight matrices; AdamW for "
        "embeddings, LM head, gains and biases)"))
    muon_lr: Float = Field(0.02, gt=0, description="optimizer muon: peak learning rate of the Muon matrices")
    muon_momentum: Float = Field(0.95, ge=0, lt=1, description="optimizer muon: Muon's momentum")
    muon_nesterov: bool = Field(True, description="optimizer muon: Nesterov momentum")
    muon_ns_steps: Int = Field(5, gt=0, description=(
        "optimizer muon: Newton-Schulz iterations that orthogonalise each update (in bf16)"))
    muon_weight_decay: Float = Field(0.0, ge=0, description=(
        "optimizer muon: decoupled weight decay of the Muon matrices"))
    embed_lr: Float = Field(0.0, ge=0, examples=[0.0], description=(
        "optimizer muon: peak learning rate (AdamW) of the embeddings (the tied head too); 0 = lr"))
    head_lr: Float = Field(0.0, ge=0, examples=[0.0], description=(
        "optimizer muon: peak learning rate (AdamW) of an untied LM head (model.tie_head=false); 0 = lr"))
    scalar_lr: Float = Field(0.0, ge=0, examples=[0.0], description=(
        "optimizer muon: peak learning rate (AdamW) of gains and biases; 0 = lr"))
    muon_ns: Literal["quintic", "polar_express"] = Field("quintic", description=(
        "optimizer muon: the Newton-Schulz iteration: quintic (one fixed polynomial, Keller Jordan's) or polar_express "
        "(a polynomial per iteration, Amsel et al. 2025, as modded-nanogpt runs it: singular values closer to 1)"))
    muon_normuon: bool = Field(False, description=(
        "optimizer muon: NorMuon (Li et al. 2025): each neuron's row of the orthogonalised update divided by its RMS "
        "over recent steps (a second moment), then scaled back to the update's norm; not under train.parallel=fsdp"))
    muon_beta2: Float = Field(0.95, ge=0, lt=1, description="optim.muon_normuon: decay of NorMuon's second moment")
    cautious_wd: bool = Field(False, description=(
        "cautious weight decay (Chen et al. 2025): decoupled weight decay only where the update and the weight have "
        "the same sign (every group with weight decay, AdamW and Muon)"))

    @model_validator(mode="after")
    def _muon_keys_need_muon(self):
        if self.optimizer != "muon":
            for key in ("embed_lr", "head_lr", "scalar_lr"):
                if getattr(self, key):
                    raise _relation_error(f"optim.{key}", "applies to optim.optimizer=muon only; "
                                                          "set optim.optimizer=muon or leave it 0")
        return self


@section(config=_SECTION)
class EvalConfig:
    every: Int = Field(250, ge=-1, examples=[0, -1], description=(
        "validation loss every N steps (0 = only at the end; -1 = never)"))
    val_tokens: Int = Field(10_485_760, gt=0, description=(
        "tokens of the validation split to score (capped by its size)"))
    val_batch: Int = Field(0, ge=0, examples=[0], description=(
        "sequences per validation forward (0 = train.micro_batch)"))
    hellaswag_every: Int = Field(-1, ge=-1, examples=[0, -1], description=(
        "HellaSwag accuracy every N steps (0 = only at the end; -1 = never); logged as kind 'hellaswag'"))
    hellaswag_items: Int = Field(0, ge=0, examples=[0], description=(
        "HellaSwag items per evaluation: 0 = all 10,042; N = a fixed subset of N spread evenly over the file"))
    hellaswag_data: Str = Field("", description=(
        'local hellaswag_val.jsonl; "" = the cached official file (downloaded when missing)'))
    lambada_every: Int = Field(-1, ge=-1, examples=[0, -1], description=(
        "LAMBADA last-word accuracy and perplexity every N steps (0 = only at the end; -1 = never); logged as kind "
        "'lambada'"))
    lambada_items: Int = Field(0, ge=0, examples=[0], description=(
        "LAMBADA passages per evaluation: 0 = all; N = a fixed subset of N spread evenly over the file"))
    lambada_data: Str = Field("", description=(
        "local LAMBADA file (jsonl with 'text', or one passage per line); \"\" = the cached lambada_openai (downloaded "
        "when missing)"))
    sample_every: Int = Field(0, ge=-1, examples=[0, -1], description=(
        "print samples every N steps (0 = only at the end; -1 = never)"))
    sample_prompt: Str = Field("Hello, I'm a language model,", description="text the samples continue")
    sample_count: Int = Field(4, gt=0, description="samples each time")
    sample_tokens: Int = Field(32, gt=0, description="new tokens per sample")
    sample_temperature: Float = Field(1.0, ge=0, description="sampling temperature (0 = greedy)", examples=[0.0])
    sample_top_k: Int = Field(50, ge=0, description="sample from the k most likely tokens (0 = no top-k)", examples=[0])


class _Schema(BaseModel):
    """A whole config as pydantic checks it: the sections, then the rules between sections."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _seq_len_fits(self):
        t, m = self.train, self.model
        if t.seq_len == 0:
            t.seq_len = m.block_size  # 0 = the model's whole context
        elif t.seq_len > m.block_size:
            raise _relation_error("train.seq_len", f"{t.seq_len} is longer than model.block_size={m.block_size}; set "
                                  f"train.seq_len=0 (the model's block_size) or at most {m.block_size}")
        if t.seq_len_warmup_steps and (t.seq_len % 2 or t.seq_len // 2 < t.seq_len_warmup_min):
            raise _relation_error("train.seq_len_warmup_steps", (
                f"train.seq_len={t.seq_len} has no half length >= train.seq_len_warmup_min={t.seq_len_warmup_min} "
                "to warm up with; lower seq_len_warmup_min or set seq_len_warmup_steps=0"))
        return self

    @model_validator(mode="after")
    def _normuon_is_not_sharded(self):
        if self.optim.muon_normuon and self.train.parallel == "fsdp":  # its per-neuron state is not a shard
            raise _relation_error("optim.muon_normuon", "does not run under train.parallel=fsdp; use ddp, or leave it "
                                                        "false")
        return self


# Section name -> its schema (a dataclass: dataclasses.fields() lists its keys).
SECTIONS: dict[str, type] = {name: f.annotation for name, f in _Schema.model_fields.items()}


@dataclass
class Config:
    """A checked config as the rest of gpt2lab uses it; ``model`` is the model's own GPTConfig."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # What loading decided for the user (a scaled warm-up, the data's tokenizer), for the start line:
    # a plain attribute, not a config key (load_config sets it).
    notes: typing.ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _keys(section_name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section_name])]


def _choices(tp) -> list[str]:
    """The values of a Literal or bool type (or a union of them) as a user writes them; [] for others."""
    if tp is bool:
        return ["true", "false"]
    if typing.get_origin(tp) is Literal:
        return [str(a) for a in typing.get_args(tp)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [c for arg in typing.get_args(tp) for c in _choices(arg)]
    return []


def _expected(tp) -> str:
    choices = _choices(tp)
    return ", ".join(choices[:-1]) + " or " + choices[-1] if choices else tp.__name__


# pydantic error type -> (its context key, the bound as a user reads it)
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def _user_error(err: dict, sources: dict[str, str]) -> UserError:
    """One pydantic error as one line: the key, where it was set, what is wrong and what to do."""
    ctx = err.get("ctx") or {}
    if err["type"] == "config":  # a rule between sections names its key itself
        return UserError(f"config key '{ctx['key']}'{sources.get(ctx['key'], '')}: {ctx['msg']}")
    section_name, name = (str(p) for p in err["loc"][:2])  # past [:2]: the member of a union (optim.fused)
    key = f"{section_name}.{name}"
    info = SECTIONS[section_name].__pydantic_fields__.get(name)
    if info is None:  # only validate() gets here (_merge refuses unknown keys): a field the section lacks
        return UserError(f"config key '{key}': not in gpt2lab.config.{SECTIONS[section_name].__name__}")
    if err["type"] in _BOUNDS:
        bound, op = _BOUNDS[err["type"]]
        msg = f"must be {op} {ctx[bound]}, got {err['input']!r} ({key}: {info.description})"
    elif err["type"] == "value_error":  # our field validators: the message says it all
        msg = str(ctx["error"])
    elif err["type"] == "finite_number":
        msg = f"expected a finite {info.annotation.__name__}, got {err['input']!r}"
    else:
        msg = f"expected {_expected(info.annotation)}, got {err['input']!r}"
        if info.annotation is str and isinstance(err["input"], bool):
            msg += " (YAML reads yes/no/on/off/true/false as true or false: quote the value)"
    return UserError(f"config key '{key}'{sources.get(key, '')}: {msg}")


def _check(raw: dict, sources: dict[str, str]) -> _Schema:
    try:
        return _Schema.model_validate(raw)
    except ValidationError as e:
        raise _user_error(e.errors()[0], sources) from None


def _closest(key: str, section_wanted: bool = False, bare: bool = False) -> str | None:
    """The config key a mistyped ``key`` (section.key, or a word alone) most likely means, searched in every
    section: a section (``section_wanted``: a YAML mapping), else the same key name elsewhere, else the closest
    key name (in the typed section first), else the closest section.key; ``bare``: a key name alone where that
    is unique (a command-line override)."""
    section, _, name = key.rpartition(".")
    if section_wanted and (sections := difflib.get_close_matches(name, list(SECTIONS), n=1)):
        return sections[0]
    every = [f"{s}.{k}" for s in SECTIONS for k in _keys(s)] + ["model.preset"]
    names = [name] if any(k.endswith("." + name) for k in every) else \
        difflib.get_close_matches(name, sorted({k.partition(".")[2] for k in every}), n=1)
    found = sorted((k for k in every if names and k.endswith("." + names[0])), key=lambda k: not k.startswith(section))
    if bare and len(found) == 1:
        return names[0]
    return found[0] if found else next(iter(difflib.get_close_matches(key, every, n=1)), None)


def _unknown(key: str, where: str, section_wanted: bool = False, bare: bool = False) -> UserError:
    close = _closest(key, section_wanted, bare)
    hint = f" (did you mean '{close}'?)" if close else ""
    shown = key if key.isprintable() else key.encode("unicode_escape").decode()  # a one-line message, whatever the key
    return UserError(f"unknown config key '{shown}'{where}{hint}; see docs/config.md for the options")


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
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        raise UserError(f"unknown model preset {preset!r}{where}; choose one of: {', '.join(MODEL_PRESETS)}")
    return {**MODEL_PRESETS[preset], **raw}


def _merge(base: dict, sources: dict[str, str], raw: dict, where: str) -> None:
    """Merge one YAML document (or the overrides) into ``base`` (section -> {key: value}), and note
    in ``sources`` where each key was set, for the error messages. Values are checked later, once."""
    if not isinstance(raw, dict):
        raise UserError(f"config{where} must be a mapping of sections ({', '.join(SECTIONS)})")
    for name, values in raw.items():
        if name not in SECTIONS:
            raise _unknown(str(name), where, section_wanted=isinstance(values, dict))
        if name == "model":
            values = _resolve_model(values, where)
        elif values is None:
            continue
        elif not isinstance(values, dict):
            raise UserError(f"config section '{name}'{where} must be a mapping, got {values!r}")
        keys = _keys(name)
        for key, value in values.items():
            if key not in keys:
                raise _unknown(f"{name}.{key}", where)
            base.setdefault(name, {})[key] = value
            sources[f"{name}.{key}"] = where


def parse_override(text: str) -> tuple[str, str, object]:
    """``optim.lr=3e-4`` or ``lr=3e-4`` -> ("optim", "lr", 0.0003)."""
    if "=" not in text:
        raise UserError(f"bad override {text!r}: write key=value, e.g. optim.lr=3e-4")
    key, _, value_text = text.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if "." in key:
        name, _, key = key.partition(".")
        if name not in SECTIONS:
            raise _unknown(f"{name}.{key}", "")
    elif key == "preset":
        name = "model"
    else:
        owners = [s for s in SECTIONS if key in _keys(s)]
        if len(owners) > 1:
            raise UserError(f"config key '{key}' is ambiguous: write one of {', '.join(f'{s}.{key}' for s in owners)}")
        if not owners:
            raise _unknown(key, "", bare=True)
        name = owners[0]
    # A string key takes the text as typed, unless quoted: sample_prompt=yes is "yes", not True;
    # run_dir=1e3 is "1e3"; "#1 hit" is not a YAML comment, "Q: why" not a mapping.
    text_as_typed = value_text.strip()
    if typing.get_type_hints(SECTIONS[name]).get(key) is str and not text_as_typed.startswith(("'", '"')):
        return name, key, text_as_typed
    try:
        value = yaml.safe_load(value_text) if text_as_typed else ""
    except yaml.YAMLError as e:  # also a YAML tag (!!python/...): safe_load refuses it, the user gets one line
        raise UserError(f"bad override {text!r}: the value is not a plain YAML value "
                        f"({str(e).splitlines()[0]}); quote it or write a number, a string or true/false") from None
    return name, key, value


def load_config(path: str | os.PathLike | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a checked Config from defaults, then a YAML file, then ``key=value`` overrides."""
    merged: dict[str, dict] = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except FileNotFoundError:
            raise UserError(f"config file {path} not found") from None
        except IsADirectoryError:
            raise UserError(f"config file {path} is a directory; give a .yaml file") from None
        except UnicodeDecodeError:
            raise UserError(f"config file {path} is not UTF-8 text; give a .yaml file") from None
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        _merge(merged, sources, raw or {}, f" in {path}")
    cli: dict[str, dict] = {}
    for text in overrides:
        name, key, value = parse_override(text)
        cli.setdefault(name, {})[key] = value
    # A preset on the command line replaces the file's architecture (the keys presets set); the
    # file's other model keys (dropout, vocab sizes, bias) and command-line overrides still apply.
    if "preset" in cli.get("model", {}):
        for key in set().union(*MODEL_PRESETS.values()):
            merged.get("model", {}).pop(key, None)
            sources.pop(f"model.{key}", None)
    file_steps = merged.get("train", {}).get("max_steps", TrainConfig.max_steps)
    _merge(merged, sources, cli, " on the command line")
    cfg = _build(merged, sources)
    if "max_steps" in cli.get("train", {}) and "warmup_steps" not in cli.get("optim", {}):
        _keep_warmup_share(cfg, _to_int(file_steps))
    return cfg


def _keep_warmup_share(cfg: Config, file_steps) -> None:
    """A run made longer or shorter on the command line keeps its config's warm-up share: the warm-up
    steps scale with train.max_steps (at least 1 when there was a warm-up), as cosine and wsd decays
    already do, so the recipe keeps its shape at any length."""
    steps, warmup = cfg.train.max_steps, cfg.optim.warmup_steps
    if type(file_steps) is not int or file_steps <= 0 or file_steps == steps or warmup == 0:
        return
    cfg.optim.warmup_steps = max(1, round(warmup * steps / file_steps))
    cfg.notes += (f"optim.warmup_steps {warmup:,} -> {cfg.optim.warmup_steps:,}: the config's warm-up share "
                     f"({warmup:,} of {file_steps:,} steps) kept for train.max_steps={steps:,} "
                     "(set optim.warmup_steps to choose)",)


def from_dict(raw: dict, where: str = "") -> Config:
    """Build and check a Config from a {section: {key: value}} mapping (e.g. a saved config);
    ``where`` (e.g. " in runs/a/config.yaml") goes into the error messages."""
    merged: dict[str, dict] = {}
    sources: dict[str, str] = {}
    _merge(merged, sources, raw, where)
    return _build(merged, sources)


def _build(merged: dict, sources: dict[str, str]) -> Config:
    s = _check(merged, sources)
    notes = []
    if "data.tokenizer" not in sources or not s.data.tokenizer:  # the data's own
        s.data.tokenizer, how = data_tokenizer(s.data.dir)
        if s.data.tokenizer != "gpt2":
            notes.append(f"tokenizer {s.data.tokenizer}: {how}")
    model = dataclasses.asdict(s.model)
    if not model["vocab_size"]:  # the tokenizer's
        model["vocab_size"] = _tokenizer_vocab(s.data.tokenizer, sources)
    if not model["padded_vocab_size"]:
        model["padded_vocab_size"] = pad_vocab(model["vocab_size"])
    elif model["padded_vocab_size"] < model["vocab_size"]:
        raise UserError(f"config key 'model.padded_vocab_size'{sources.get('model.padded_vocab_size', '')}: "
                        f"{model['padded_vocab_size']} is smaller than the vocab_size {model['vocab_size']} of "
                        f"tokenizer {s.data.tokenizer!r}; make it >= vocab_size (or 0)")
    cfg = Config(model=GPTConfig(**model), data=s.data, train=s.train, optim=s.optim, eval=s.eval)
    cfg.notes = tuple(notes)
    return cfg


def _tokenizer_vocab(spec: str, sources: dict[str, str]) -> int:
    if spec == "gpt2":  # no need to read the shipped vocabulary
        return VOCAB_SIZE
    try:
        return load_tokenizer(spec).n_vocab
    except UserError as e:
        raise UserError(f"config key 'data.tokenizer'{sources.get('data.tokenizer', '')}: {e}") from None


def validate(cfg: Config) -> None:
    """Check a Config again (e.g. after ``cfg.model = dataclasses.replace(...)``): every field and
    relation that from_dict checks; raise UserError naming the key and what to do."""
    _check(dataclasses.asdict(cfg), {})


def _values(info) -> str:
    """The values column of the docs: the choices, or the type and its bounds."""
    choices = _choices(info.annotation)
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    bounds = [f"{op} {getattr(m, name)}" for m in info.metadata for name, op in _BOUNDS.values() if hasattr(m, name)]
    return " ".join([info.annotation.__name__, ", ".join(bounds)]).strip()


def config_doc() -> str:
    """Markdown reference of every config key, from the field descriptions (the model's are in model.py)."""
    lines = ["# Configuration reference", "",
             "Generated by `gpt2lab config --doc` from gpt2lab/config.py (the model keys: gpt2lab/model.py).", "",
             "On the command line (`key=value` or `section.key=value`) a value is read as YAML (numbers, "
             "true/false, null, lists), except for a string key, which takes the text as typed (`#`, `: ` and "
             "`- ` included) unless it is quoted.", ""]
    for name, cls in SECTIONS.items():
        lines += [f"## `{name}`", "", "| key | default | values | meaning |", "|---|---|---|---|"]
        if name == "model":
            lines.append(f"| `preset` | - | {', '.join(f'`{p}`' for p in MODEL_PRESETS)} | a named size (see below); "
                         "other model keys override it |")
        for key, info in cls.__pydantic_fields__.items():
            lines.append(f"| `{name}.{key}` | `{info.default!r}` | {_values(info)} | {info.description} |")
        lines.append("")
    lines += ["## Model presets", "", "| preset | n_layer | n_head | n_embd | block_size |", "|---|---|---|---|---|"]
    for preset, p in MODEL_PRESETS.items():
        lines.append(f"| `{preset}` | {p['n_layer']} | {p['n_head']} | {p['n_embd']} | {p.get('block_size', 1024)} |")
    return "\n".join(lines) + "\n"
