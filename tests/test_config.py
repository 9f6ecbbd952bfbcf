import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

from gpt2lab import config as config_mod
from gpt2lab.config import MODEL_PRESETS, SECTIONS, Config, config_doc, from_dict, load_config, parse_override
from gpt2lab.errors import UserError
from gpt2lab.model import GPTConfig

REPO = Path(__file__).resolve().parent.parent


def write_yaml(tmp_path, data, name="cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_defaults():
    cfg = load_config()
    assert cfg.model == GPTConfig()
    assert cfg.train.seq_len == cfg.model.block_size  # 0 means block_size
    assert cfg.optim == config_mod.OptimConfig()


def test_yaml_then_overrides_precedence(tmp_path):
    p = write_yaml(tmp_path, {
        "model": {"preset": "micro", "dropout": 0.1},
        "train": {"micro_batch": 8, "max_steps": 100, "seed": 7},
        "optim": {"lr": 1.0e-3, "warmup_steps": 10},
    })
    cfg = load_config(p, ["optim.lr=3e-4", "max_steps=50", "train.seq_len=32", "n_layer=3"])
    # CLI beats YAML
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 50
    assert cfg.model.n_layer == 3  # override on top of the preset
    # YAML beats defaults, where the CLI is silent
    assert cfg.train.micro_batch == 8 and cfg.train.seed == 7 and cfg.optim.warmup_steps == 10
    assert cfg.model.dropout == 0.1
    # preset fields not overridden come from the preset
    assert (cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (2, 64, 128)
    # untouched keys keep their defaults
    assert cfg.optim.weight_decay == config_mod.OptimConfig.weight_decay
    assert cfg.train.seq_len == 32


def test_later_override_wins():
    cfg = load_config(None, ["lr=1e-3", "optim.lr=2e-3"])
    assert cfg.optim.lr == pytest.approx(2e-3)


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_preset_expansion(preset, tmp_path):
    expected = {**dataclasses.asdict(GPTConfig()), **MODEL_PRESETS[preset]}
    for cfg in (
        load_config(write_yaml(tmp_path, {"model": preset})),  # model: NAME
        load_config(write_yaml(tmp_path, {"model": {"preset": preset}})),  # model: {preset: NAME}
        load_config(None, [f"preset={preset}"]),
        load_config(None, [f"model.preset={preset}"]),
    ):
        assert dataclasses.asdict(cfg.model) == expected
        assert cfg.train.seq_len == expected["block_size"]


def test_cli_preset_replaces_yaml_model(tmp_path):
    p = write_yaml(tmp_path, {"model": {"preset": "gpt2", "n_layer": 5}})
    cfg = load_config(p, ["preset=micro", "n_head=1"])
    assert cfg.model.n_layer == MODEL_PRESETS["micro"]["n_layer"]
    assert cfg.model.n_head == 1 and cfg.model.n_embd == MODEL_PRESETS["micro"]["n_embd"]


def test_cli_preset_keeps_the_files_other_model_keys(tmp_path):
    p = write_yaml(tmp_path, {"model": {"preset": "gpt2", "dropout": 0.1, "vocab_size": 1000, "padded_vocab_size": 1024}})
    cfg = load_config(p, ["preset=micro"])
    assert (cfg.model.dropout, cfg.model.vocab_size, cfg.model.padded_vocab_size) == (0.1, 1000, 1024)
    assert cfg.model.n_layer == MODEL_PRESETS["micro"]["n_layer"]


def test_unknown_preset(tmp_path):
    with pytest.raises(UserError, match="gpt3") as e:
        load_config(write_yaml(tmp_path, {"model": "gpt3"}))
    assert "micro" in str(e.value)  # lists the choices


@pytest.mark.parametrize(
    "data, named, suggestion",
    [
        ({"optimizer": {"lr": 1e-3}}, "optimizer", "optim"),
        ({"train": {"max_step": 3}}, "train.max_step", "train.max_steps"),
        ({"optim": {"learning_rate": 1e-3}}, "optim.learning_rate", None),
        ({"model": {"preset": "micro", "n_layers": 3}}, "model.n_layers", "model.n_layer"),
    ],
)
def test_unknown_key_in_yaml(tmp_path, data, named, suggestion):
    p = write_yaml(tmp_path, data)
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"'{named}'" in msg and str(p) in msg
    if suggestion:
        assert f"did you mean '{suggestion}'" in msg


@pytest.mark.parametrize(
    "override, named, suggestion",
    [
        ("max_step=3", "max_step", "max_steps"),
        ("optim.lrr=1e-3", "optim.lrr", "optim.lr"),
        ("optimm.lr=1e-3", "optimm.lr", "optim.lr"),
        ("warmup=5", "warmup", "warmup_steps"),
    ],
)
def test_unknown_key_on_cli(override, named, suggestion):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"'{named}'" in msg
    assert f"did you mean '{suggestion}'" in msg


def test_override_syntax():
    assert parse_override("optim.lr=3e-4")[:2] == ("optim", "lr")
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == 3e-4
    assert parse_override("--max-steps=7") == ("train", "max_steps", 7)
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["max_steps"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_steps=abc", "train.max_steps"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("train.compile=maybe", "train.compile"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.lr=true", "optim.lr"),
        ("train.micro_batch=[1, 2]", "train.micro_batch"),
        ("data.dir={a: 1}", "data.dir"),
    ],
)
def test_bad_type_names_key(override, key):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert f"'{key}'" in str(e.value)


def test_bad_type_in_yaml_names_key(tmp_path):
    with pytest.raises(UserError, match="'train.seed'"):
        load_config(write_yaml(tmp_path, {"train": {"seed": "x"}}))
    with pytest.raises(UserError, match="'train'"):
        load_config(write_yaml(tmp_path, {"train": [1, 2]}))


def test_value_coercion():
    cfg = load_config(None, ["total_batch_tokens=5e5", "compile=yes", "lr=6e-4", "sample_prompt=123", "deterministic=1"])
    assert cfg.train.total_batch_tokens == 500_000 and isinstance(cfg.train.total_batch_tokens, int)
    assert cfg.train.compile is True and cfg.train.deterministic is True
    assert cfg.optim.lr == 6e-4
    assert cfg.eval.sample_prompt == "123"


BAD_VALUES = [
    ("model.n_head=5", "model.n_embd"),  # 768 not divisible by 5
    ("model.n_layer=0", "model.n_layer"),
    ("model.padded_vocab_size=100", "model.padded_vocab_size"),
    ("model.dropout=1.0", "model.dropout"),
    ("train.micro_batch=0", "train.micro_batch"),
    ("train.seq_len=2048", "train.seq_len"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.dtype=float16", "train.dtype"),
    ("train.device=tpu", "train.device"),
    ("train.ckpt_every=-1", "train.ckpt_every"),
    ("optim.lr=0", "optim.lr"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio"),
    ("optim.schedule=exp", "optim.schedule"),
    ("optim.beta1=1.0", "optim.beta1"),
    ("optim.beta2=1.5", "optim.beta2"),
    ("optim.grad_clip=-1", "optim.grad_clip"),
    ("optim.fused=sometimes", "optim.fused"),
    ("eval.val_tokens=0", "eval.val_tokens"),
    ("eval.sample_count=0", "eval.sample_count"),
    ("eval.sample_tokens=0", "eval.sample_tokens"),
    ("eval.sample_temperature=-1", "eval.sample_temperature"),
    ("eval.sample_top_k=-3", "eval.sample_top_k"),
    ("eval.every=-2", "eval.every"),
    ("eval.sample_every=-5", "eval.sample_every"),
    ("train.threads=-1", "train.threads"),
]


@pytest.mark.parametrize("override, key", BAD_VALUES)
def test_bad_value_names_key(override, key):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert f"'{key}'" in str(e.value)


def test_unqualified_keys_resolve_to_their_only_section():
    owners: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(section)
    for key, sections in owners.items():
        if len(sections) == 1:
            assert parse_override(f"{key}=1")[:2] == (sections[0], key)
        else:
            with pytest.raises(UserError, match="ambiguous"):
                parse_override(f"{key}=1")


def test_ambiguous_unqualified_key(monkeypatch):
    # No field name is shared between today's sections, so register a section that shares one
    # ('lr' with optim) to exercise the ambiguity rule; qualified keys still work.
    @dataclasses.dataclass
    class Probe:
        lr: float = 1.0

    monkeypatch.setitem(SECTIONS, "probe", Probe)
    with pytest.raises(UserError, match="ambiguous") as e:
        parse_override("lr=1e-3")
    assert "optim.lr" in str(e.value) and "probe.lr" in str(e.value)
    assert parse_override("optim.lr=0.5") == ("optim", "lr", 0.5)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["preset=micro", "lr=1e-3", "run_dir=runs/x", "dropout=0.1"])
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    p = write_yaml(tmp_path, cfg.to_yaml())
    assert load_config(p) == cfg


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write_yaml(tmp_path, "train: {max_steps: [1,\n"))
    with pytest.raises(UserError, match="mapping"):
        load_config(write_yaml(tmp_path, "- a\n- b\n"))
    assert load_config(write_yaml(tmp_path, "")) == load_config()


REPO_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=[p.name for p in REPO_CONFIGS])
def test_repo_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    config_mod.validate(cfg)


def test_repo_has_configs():
    assert REPO_CONFIGS, "configs/*.yaml: none found"


def test_quickstart_config_matches_packaged_copy():
    packaged = REPO / "gpt2lab" / "assets" / "quickstart.yaml"
    assert load_config(REPO / "configs" / "quickstart.yaml") == load_config(packaged)


def test_gpt2_124m_config():
    path = REPO / "configs" / "gpt2-124m.yaml"
    if not path.is_file():
        pytest.skip("configs/gpt2-124m.yaml not written yet")
    cfg = load_config(path)
    assert cfg.optim.lr == pytest.approx(6e-4)
    assert cfg.optim.warmup_steps == 715
    assert cfg.train.max_steps == 19073
    assert cfg.train.total_batch_tokens == 524288 == 2**19
    assert cfg.train.micro_batch == 64
    assert cfg.train.seq_len == 1024
    assert cfg.optim.weight_decay == pytest.approx(0.1)
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (12, 12, 768)
    # ~10B tokens: max_steps x batch covers FineWeb-Edu sample-10BT once
    assert abs(cfg.train.max_steps * cfg.train.total_batch_tokens - 10e9) / 10e9 < 0.01


def test_config_doc_mentions_every_field():
    doc = config_doc()
    for section, cls in SECTIONS.items():
        src = inspect.getsource(cls)
        rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith(f"| `{section}.")}
        for f in dataclasses.fields(cls):
            key = f"`{section}.{f.name}`"
            assert key in rows, key
            m = re.search(rf"^\s+{f.name}:.*?#\s*(.+)$", src, re.M)
            if m:  # the source comment is the documented meaning
                assert m.group(1).strip() in rows[key], key
    for preset in MODEL_PRESETS:
        assert f"`{preset}`" in doc
