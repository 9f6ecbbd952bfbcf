"""weights.py: one rule for what a model source is, and one loader for all of them."""

import pytest
import torch

from gpt2lab import weights
from gpt2lab.checkpoint import save_checkpoint
from gpt2lab.config import load_config
from gpt2lab.errors import UserError
from gpt2lab.hf import save_hf
from gpt2lab.model import GPT


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same micro model as a run folder, a checkpoint folder and a Hugging Face folder."""
    root = tmp_path_factory.mktemp("sources")
    cfg = load_config(None, ["model.preset=micro"])
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    ckpt = save_checkpoint(root / "run", 3, model, cfg, {"loader": {}, "rng": []})
    save_hf(model, root / "hf", tokenizer=False)
    return model, {"run": root / "run", "checkpoint": ckpt, "hf": root / "hf"}


def test_each_kind_is_classified_and_loads_the_same_weights(sources):
    model, paths = sources
    assert {k: weights.classify(p) for k, p in paths.items()} == {
        "run": weights.RUN, "checkpoint": weights.CHECKPOINT, "hf": weights.HF_FOLDER}
    idx = torch.randint(0, model.config.vocab_size, (1, 16))
    want = model(idx)[0]
    for kind, path in paths.items():
        loaded = weights.load_pretrained(path)
        assert not loaded.training, kind
        torch.testing.assert_close(loaded(idx)[0], want, atol=1e-5, rtol=0, msg=kind)


def test_hub_names_and_paths(tmp_path, monkeypatch):
    assert weights.classify("gpt2") == weights.HUB
    assert weights.classify("openai-community/gpt2") == weights.HUB
    for missing in (tmp_path / "nope", "./nope", "~/nope", "a/b/c"):
        with pytest.raises(UserError, match="no such folder.*; expected a checkpoint, run or Hugging Face folder"):
            weights.classify(missing)
    # DIR/NAME reads as a hub name, but where DIR is a folder here it is a mistyped path (issue 29 item 3)
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    with pytest.raises(UserError, match=r"runs/quickstrat: no such folder \(did you mean runs/quickstart\?\)"):
        monkeypatch.chdir(tmp_path)
        weights.classify("runs/quickstrat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model"):
        weights.classify(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="a file, not a model"):
        weights.classify(tmp_path / "file.txt")


def test_convert_round_trip_and_refusals(sources, tmp_path):
    model, paths = sources
    back = weights.import_hf(weights.export_hf(paths["run"], tmp_path / "hf"), tmp_path / "ckpt")
    assert weights.classify(back) == weights.CHECKPOINT
    V = model.config.vocab_size  # Hugging Face keeps the real vocabulary only: padded rows come back as 0
    for k, v in weights.load_pretrained(back).state_dict().items():
        want = model.state_dict()[k]
        assert (torch.equal(v[:V], want[:V]) if k in ("transformer.wte.weight", "lm_head.weight")
                else torch.equal(v, want)), k
    with pytest.raises(UserError, match="already a gpt2lab checkpoint"):
        weights.import_hf(paths["checkpoint"], tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_weights_files_are_as_readable_as_the_others(sources, tmp_path):
    """model.safetensors, of a checkpoint and of a to-hf export, gets the umask's mode like every other file, not
    safetensors' 0600 (issue 29 item 14)."""
    import os
    import stat

    from gpt2lab.fileio import file_mode

    _, paths = sources
    old = os.umask(0o022)
    try:
        folders = [weights.import_hf(paths["hf"], tmp_path / "ck"), weights.export_hf(paths["run"], tmp_path / "hf")]
    finally:
        os.umask(old)
    for folder in folders:
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}
        assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert file_mode() == 0o666 & ~old
