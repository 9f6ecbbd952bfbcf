"""Import GPT-2 weights from Hugging Face transformers, and export gpt2lab models to it.

The two layouts differ in three ways only:

- transformers stores the four projection weights of a block (``attn.c_attn``, ``attn.c_proj``,
  ``mlp.c_fc``, ``mlp.c_proj``) as ``Conv1D``, i.e. (in, out); gpt2lab uses ``nn.Linear``,
  (out, in). Conversion is a transpose.
- gpt2lab pads the vocabulary (50257 -> 50304 rows of the token embedding); padded rows are
  zero on import and dropped on export.
- the LM head is tied to the token embedding in both, and stored once.

Reading never unpickles code: safetensors, or ``pytorch_model.bin`` through
``torch.load(weights_only=True)``. Local directories need neither transformers nor
huggingface_hub; hub names need huggingface_hub (``pip install 'gpt2lab[hf]'``).

Command line: ``gpt2lab convert from-hf SRC OUT`` and ``gpt2lab convert to-hf CHECKPOINT OUT``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import UserError
from .fileio import atomic_dir, file_mode
from .model import GPT, GPTConfig
from .sizes import check_fits
from .tokenizer import (
    COPY_DIR,
    EOT_STRING,
    EOT_TOKEN,
    Tokenizer,
    bytes_to_unicode,
    copy_folder,
    load_tokenizer,
    onig_pattern,
    pad_vocab,
)

HF_CONFIG = "config.json"
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # (in, out) in transformers
LAYER_PARAMS = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
TOP_PARAMS = ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")
_LAYER_KEY = re.compile(r"^h\.(0|[1-9]\d*)\.(.+)\.(?:weight|bias)$")  # h.3.attn.c_attn.weight (no h.03)
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # the same function: GELU, tanh approximation
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers in old checkpoints
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2", "owner/name"


def is_hub_name(source: str) -> bool:
    """Whether ``source``, which names nothing on disk, reads as a hub name rather than a path."""
    return not source.startswith((".", "/", "~")) and bool(_HUB_NAME.match(source))


# --- configs --------------------------------------------------------------------------------
def gpt2lab_config_from_hf(hf_config: Mapping | object) -> GPTConfig:
    """GPTConfig for a transformers GPT-2 config (a dict or a ``GPT2Config``).

    Raises UserError naming the first field that makes the model something other than GPT-2
    as gpt2lab computes it.
    """
    c = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)

    def bad(field: str, why: str):
        raise UserError(f"config field '{field}' is {c.get(field)!r}: {why}; gpt2lab imports GPT-2 models only")

    def expect(field: str, default, ok, why: str) -> None:
        if not ok(c.get(field, default)):
            bad(field, why)

    expect("model_type", None, lambda v: v == "gpt2", "expected 'gpt2'")
    archs = c.get("architectures") or ["GPT2LMHeadModel"]
    if not any(a in ("GPT2LMHeadModel", "GPT2Model") for a in archs):
        bad("architectures", "expected GPT2LMHeadModel")
    expect("activation_function", "gelu_new", lambda v: v in GELU_TANH, "expected gelu_new (GELU, tanh approximation)")
    expect("layer_norm_epsilon", 1e-5, lambda v: v == 1e-5, "expected 1e-05")
    expect("tie_word_embeddings", True, lambda v: v is True, "the LM head must be tied to the token embedding")
    expect("scale_attn_weights", True, lambda v: v is True, "expected true (attention scaled by 1/sqrt(head_dim))")
    expect("scale_attn_by_inverse_layer_idx", False, lambda v: v is False, "expected false")
    expect("reorder_and_upcast_attn", False, lambda v: v is False, "expected false")
    expect("add_cross_attention", False, lambda v: v is False, "expected false (no cross-attention)")
    for key in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size"):
        expect(key, None, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
               "expected a positive integer")
    n_embd, n_head = c["n_embd"], c["n_head"]
    expect("n_embd", None, lambda v: v % n_head == 0, f"not divisible by n_head={n_head}")
    expect("n_inner", None, lambda v: v is None or v == 4 * n_embd, f"expected null or 4 * n_embd = {4 * n_embd}")
    expect("resid_pdrop", 0.0, lambda v: type(v) in (int, float) and 0 <= v < 1, "expected a probability in [0, 1)")
    return GPTConfig(
        block_size=c["n_positions"],
        vocab_size=c["vocab_size"],
        padded_vocab_size=pad_vocab(c["vocab_size"]),
        n_layer=c["n_layer"],
        n_head=n_head,
        n_embd=n_embd,
        dropout=float(c.get("resid_pdrop", 0.0)),
        bias=True,
    )


def hf_config_from_gpt2lab(cfg: GPTConfig, eot: int | None = None) -> dict:
    """The transformers ``config.json`` of a gpt2lab model; ``eot``: its tokenizer's <|endoftext|> id
    (default GPT-2's 50256, where the vocabulary has it)."""
    if eot is None:
        eot = EOT_TOKEN if cfg.vocab_size > EOT_TOKEN else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }


# --- state dicts ----------------------------------------------------------------------------
def gpt2lab_state_from_hf(hf_state_dict: Mapping[str, torch.Tensor], hf_config) -> tuple[GPTConfig, dict]:
    """Convert a transformers GPT-2 state dict (with or without the ``transformer.`` prefix) to gpt2lab's.

    Returns ``(GPTConfig, state_dict)``; the state dict loads into ``GPT(cfg)`` with
    ``strict=True`` (``lm_head.weight`` is the token embedding tensor itself).
    """
    cfg = gpt2lab_config_from_hf(hf_config)
    src: dict[str, torch.Tensor] = {}
    head = None
    for key, t in hf_state_dict.items():
        if key == "lm_head.weight":
            head = t
            continue
        k = key[len("transformer.") :] if key.startswith("transformer.") else key
        if _BUFFER.match(k):
            continue
        src[k] = t
    unexpected = sorted(k for k in src if not _expected(k, cfg.n_layer))
    if unexpected or len(src) != len(TOP_PARAMS) + 2 * len(LAYER_PARAMS) * cfg.n_layer:
        # the first few missing keys only: a config.json's n_layer may be far beyond the weights it comes with
        missing = list(itertools.islice((k for k in _expected_keys(cfg.n_layer) if k not in src), 3))
        raise UserError(
            f"weights do not fit the config (n_layer={cfg.n_layer}): missing {missing}, unexpected {unexpected[:3]}"
        )
    C, V = cfg.n_embd, cfg.vocab_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (cfg.block_size, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(cfg.n_layer):
        for p, (n_in, n_out) in {"ln_1": (C, None), "ln_2": (C, None), "attn.c_attn": (C, 3 * C),
                                 "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}.items():
            shapes[f"h.{i}.{p}.weight"] = (n_in,) if n_out is None else (n_in, n_out)
            shapes[f"h.{i}.{p}.bias"] = (n_in,) if n_out is None else (n_out,)
    for k, shape in shapes.items():
        if tuple(src[k].shape) != shape:
            raise UserError(f"weight {k} has shape {tuple(src[k].shape)}, expected {shape} from the config")
    wte = src["wte.weight"]
    if head is not None and not torch.equal(head.to(wte.dtype), wte):
        raise UserError("lm_head.weight differs from transformer.wte.weight: the LM head is not tied; "
                        "gpt2lab imports GPT-2 models with tied embeddings only")

    def f32(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).contiguous()

    padded = torch.zeros(cfg.padded_vocab_size, C, dtype=torch.float32)
    padded[:V] = f32(wte)
    out = {"transformer.wte.weight": padded, "transformer.wpe.weight": f32(src["wpe.weight"])}
    for k, t in src.items():
        if k.startswith("h."):
            is_conv = any(k.endswith(f"{p}.weight") for p in CONV1D)
            out[f"transformer.{k}"] = f32(t.t() if is_conv else t)
    out["transformer.ln_f.weight"] = f32(src["ln_f.weight"])
    out["transformer.ln_f.bias"] = f32(src["ln_f.bias"])
    out["lm_head.weight"] = padded
    return cfg, out


def _expected_keys(n_layer: int):
    """The keys a transformers GPT-2 state dict of ``n_layer`` blocks holds (without ``transformer.``), lazily."""
    yield from TOP_PARAMS
    for i in range(n_layer):
        for p in LAYER_PARAMS:
            yield f"h.{i}.{p}.weight"
            yield f"h.{i}.{p}.bias"


def _expected(key: str, n_layer: int) -> bool:
    """Whether ``key`` is one of :func:`_expected_keys`, without listing them."""
    m = _LAYER_KEY.match(key)
    return key in TOP_PARAMS or bool(m and int(m[1]) < n_layer and m[2] in LAYER_PARAMS)


def non_gpt2_features(cfg: GPTConfig) -> list[str]:
    """The model keys, as ``key=value``, by which ``cfg`` computes something transformers' GPT-2 cannot
    (the speedrun switches; ``bias=false`` exports as zero biases and is not one of them)."""
    gpt2 = GPTConfig()
    keys = ("rotary", "qk_norm", "norm", "mlp", "tie_head", "logit_softcap", "value_embeds", "unet_skips")
    return [f"model.{k}={getattr(cfg, k)}" for k in keys if getattr(cfg, k) != getattr(gpt2, k)]


def hf_state_from_gpt2lab(model: GPT, eot: int | None = None) -> tuple[dict, dict]:
    """The transformers ``GPT2LMHeadModel`` state dict (without the tied ``lm_head.weight``) and config.json of a model.

    A model with ``bias=False`` gets zero biases, which compute the same function. A model with
    features GPT-2 lacks (``non_gpt2_features``) is refused: no transformers GPT-2 computes it.
    """
    cfg = model.config
    features = non_gpt2_features(cfg)
    if features:
        raise UserError(f"this model uses features transformers' GPT-2 does not have ({', '.join(features)}); "
                        "it cannot be exported to the Hugging Face GPT-2 format")
    out: dict[str, torch.Tensor] = {}
    for k, t in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        t = t.detach().cpu()
        if k == "transformer.wte.weight":
            t = t[: cfg.vocab_size]
        if any(k.endswith(f"{p}.weight") for p in CONV1D):
            out[k] = t.t().contiguous()  # a copy already
        else:
            out[k] = t.clone(memory_format=torch.contiguous_format)
    if not cfg.bias:  # transformers' GPT-2 always has biases: zeros are the same function
        C = cfg.n_embd
        dtype = out["transformer.wte.weight"].dtype
        sizes = {"ln_1": C, "attn.c_attn": 3 * C, "attn.c_proj": C, "ln_2": C, "mlp.c_fc": 4 * C, "mlp.c_proj": C}
        for i in range(cfg.n_layer):
            for p, n in sizes.items():
                out.setdefault(f"transformer.h.{i}.{p}.bias", torch.zeros(n, dtype=dtype))
        out.setdefault("transformer.ln_f.bias", torch.zeros(C, dtype=dtype))
    return out, hf_config_from_gpt2lab(cfg, eot)


# --- reading transformers directories -------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: not a directory saved by transformers' save_pretrained()") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(obj), "a number")
        raise UserError(f"{path} holds {kind}, not a JSON object: not a transformers config")
    return obj


def _load_torch_bin(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged file, or pickled objects weights_only refuses
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: cannot read weights safely ({type(e).__name__}: {first}); "
                        "gpt2lab loads .bin files with weights_only=True and never unpickles code") from None


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: cannot read weights ({e})") from None


def read_hf_state(directory: str | os.PathLike) -> dict:
    """The weights of a transformers directory: safetensors (single or sharded), else pytorch_model.bin."""
    d = Path(directory)
    for name, loader in (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_torch_bin)):
        if (d / name).is_file():
            return loader(d / name)
        index = d / f"{name}.index.json"
        if index.is_file():
            files = sorted(set(_read_json(index).get("weight_map", {}).values()))
            if not files:
                raise UserError(f"{index} has no weight_map")
            state: dict = {}
            for f in files:
                if not (d / f).is_file():
                    raise UserError(f"{d / f} is missing (listed in {index.name})")
                state.update(loader(d / f))
            return state
    raise UserError(f"{d}: no model.safetensors or pytorch_model.bin "
                    "(expected a directory saved with save_pretrained())")


def _download(name: str) -> Path:
    """Fetch config and weights of a hub model into the Hugging Face cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{name!r} is not a local directory, and fetching it from the Hugging Face hub needs "
                        "huggingface_hub: pip install 'gpt2lab[hf]'") from None
    try:
        path = Path(snapshot_download(name, allow_patterns=["config.json", "model.safetensors*"]))
        if not any(path.glob("model.safetensors*")):
            path = Path(snapshot_download(name, allow_patterns=["config.json", "pytorch_model.bin*"]))
    except Exception as e:  # offline, unknown repo, gated, ...: every failure is the user's to fix
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot fetch {name!r} from the Hugging Face hub ({type(e).__name__}: {first}); "
                        "check the name and the connection, "
                        "or pass a local directory saved with save_pretrained()") from None
    return path


def resolve_hf_source(src: str | os.PathLike) -> Path:
    """A local transformers directory, or a hub name downloaded to the local cache."""
    s = os.fspath(src)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{p}: expected a directory saved by transformers' save_pretrained(), got a file")
        return p
    if not is_hub_name(s):
        raise UserError(f"{s}: no such directory")
    return _download(s)


def load_hf(src: str | os.PathLike) -> GPT:
    """A GPT (eval mode, fp32, CPU) with the weights of a transformers GPT-2 directory or hub name."""
    d = resolve_hf_source(src)
    hf_config = _read_json(d / HF_CONFIG)
    try:
        check_fits(gpt2lab_config_from_hf(hf_config), "cpu", HF_CONFIG, keys="its n_layer, n_embd")  # weights unread
        cfg, state = gpt2lab_state_from_hf(read_hf_state(d), hf_config)
    except UserError as e:
        raise UserError(f"{src}: {e}") from None
    return GPT.from_state_dict(cfg, state).eval()


# --- writing --------------------------------------------------------------------------------
def save_hf(model: GPT, out: str | os.PathLike, overwrite: bool = False,
            tokenizer: Tokenizer | str | bool | None = None) -> Path:
    """Write ``model`` as a transformers GPT-2 directory, atomically.

    ``GPT2LMHeadModel.from_pretrained(out)`` loads it, and, when the tokenizer files are written,
    ``AutoTokenizer.from_pretrained(out)``, which then encodes as the tokenizer does through tiktoken.
    ``tokenizer``: a Tokenizer or spec (its files are written), False (none), or None: GPT-2's when
    the vocabulary is GPT-2's 50257 tokens. A tokenizer folder is also copied into ``out/tokenizer/``,
    so that gpt2lab finds it there (sample, eval, convert from-hf).
    """
    from safetensors.torch import save_file

    if tokenizer is None:
        tokenizer = model.config.vocab_size == 50257
    tok = load_tokenizer("gpt2" if tokenizer is True else tokenizer) if tokenizer is not False else None
    if tok is not None and tok.folder is None and tok.n_vocab > model.config.vocab_size:
        tok = None  # GPT-2's does not fit a smaller vocabulary: no tokenizer files, as for any unknown vocabulary
    if tok is not None and tok.n_vocab > model.config.vocab_size:
        raise UserError(f"tokenizer {tok.describe()} has more tokens than the model's vocab_size "
                        f"{model.config.vocab_size}: it is not this model's tokenizer")
    state, config = hf_state_from_gpt2lab(model, tok.eot_token if tok is not None else None)
    with atomic_dir(out, overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", file_mode())  # safetensors writes 0600; as readable as the other files
        (tmp / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if config["eos_token_id"] is not None:
            gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tok is not None:
            write_tokenizer_files(tmp, model.config.block_size, tok)
            copy_folder(tok, tmp / COPY_DIR)
    return Path(out)


# --- tokenizer files ------------------------------------------------------------------------
def _merge_parts(token: bytes, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge makes ``token``: byte-pair encode it with the merges ranked before it."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not the merge of two earlier tokens")
    return parts[0], parts[1]


def vocab_and_merges(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json's mapping and merges.txt's pairs (in rank order) of a tokenizer, from its ranks."""
    ranks = tok.enc._mergeable_ranks
    b2u = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    order = sorted(ranks.items(), key=lambda kv: kv[1])
    vocab = {text(t): rank for t, rank in order}
    vocab[EOT_STRING] = tok.eot_token
    merges = []
    for t, _rank in order:
        if len(t) > 1:
            try:
                a, b = _merge_parts(t, ranks)
            except ValueError as e:
                raise UserError(f"tokenizer {tok.spec}: {e}; it cannot be written as BPE merges") from None
            merges.append((text(a), text(b)))
    return vocab, merges


@functools.lru_cache(maxsize=1)
def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json's mapping and merges.txt's pairs (in rank order), derived from the shipped vocabulary."""
    return vocab_and_merges(load_tokenizer("gpt2"))


def _fast_tokenizer_json(tok: Tokenizer, vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict:
    """tokenizer.json for the ``tokenizers`` library: the tokenizer's own split pattern, then GPT-2's byte-level
    BPE; ``ignore_merges``: a piece that is a whole token is that token, as tiktoken encodes."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": tok.eot_token, "content": EOT_STRING, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": onig_pattern(tok.enc._pat_str)}, "behavior": "Isolated",
             "invert": False},
            byte_level]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [list(m) for m in merges]},
    }


def write_tokenizer_files(directory: str | os.PathLike, model_max_length: int = 1024,
                          tokenizer: Tokenizer | str = "gpt2") -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json of a tokenizer, for transformers.

    GPT-2's are OpenAI's files (transformers' GPT2Tokenizer); another tokenizer also gets a tokenizer.json with
    its own split pattern, loaded as a PreTrainedTokenizerFast, since GPT2Tokenizer knows GPT-2's pattern only.
    """
    tok = load_tokenizer(tokenizer)
    d = Path(directory)
    vocab, merges = gpt2_vocab_and_merges() if tok.folder is None else vocab_and_merges(tok)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": EOT_STRING, "eos_token": EOT_STRING, "unk_token": EOT_STRING}
    (d / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    tok_config = {
        # another tokenizer: the generic fast class, which runs tokenizer.json as written (transformers' GPT-2
        # classes put GPT-2's own split pattern in front of the BPE, whatever tokenizer.json says)
        "tokenizer_class": "GPT2Tokenizer" if tok.folder is None else "PreTrainedTokenizerFast",
        **special,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    if tok.folder is not None:
        (d / "tokenizer.json").write_text(json.dumps(_fast_tokenizer_json(tok, vocab, merges), ensure_ascii=False),
                                          encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


# --- transformers' GPT-2 of the same shape, trained as gpt2lab's model is (gpt2lab bench --compare hf) -----


class TransformersLM(torch.nn.Module):
    """transformers' GPT-2 behind gpt2lab's ``model(x, y) -> (logits, loss)`` call, with its own
    loss (labels = inputs, shifted inside transformers), as a user of transformers trains it."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x, _y, **_gpt2lab_options):
        return None, self.hf(input_ids=x, labels=x).loss


def transformers_lm(cfg: GPTConfig) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel of ``cfg``'s shape (SDPA attention), randomly initialised, as a
    :class:`TransformersLM`: the peer ``gpt2lab bench --compare hf`` times."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise UserError("--compare hf needs transformers: pip install 'gpt2lab[hf]'") from None
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                        attn_pdrop=cfg.dropout, attn_implementation="sdpa")
    return TransformersLM(GPT2LMHeadModel(hf_cfg))
