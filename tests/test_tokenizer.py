import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2lab import tokenizer as tk
from gpt2lab.tokenizer import EOT_STRING, EOT_TOKEN, VOCAB_SHA256, VOCAB_SIZE, decode, encode, get_tokenizer, vocab_path
from cli_helpers import gpt2_tokenizer_sha256

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reference(small_data):
    path = small_data / "gpt2_124M_reference.json"
    return json.loads(path.read_text(encoding="utf-8"))["tokenizer_test_cases"]


def test_reference_cases(reference):
    enc = get_tokenizer()
    cases = reference["cases"]
    assert cases, "no test cases in the reference"
    checked = 0
    for case in cases:
        text = case["text"]
        if "ids" in case:  # plain text: encode_ordinary, and encode() agrees when no special token is present
            assert enc.encode_ordinary(text) == case["ids"], text
            assert encode(text) == case["ids"], text
            checked += 1
        if "ids_as_ordinary_text" in case:  # <|endoftext|> inside the text is ordinary text
            assert enc.encode_ordinary(text) == case["ids_as_ordinary_text"], text
            assert encode(text) == case["ids_as_ordinary_text"], text
            checked += 1
        if "ids_allowed_special_all" in case:  # <|endoftext|> becomes the special token
            assert enc.encode(text, allowed_special="all") == case["ids_allowed_special_all"], text
            with pytest.raises(ValueError):  # plain encode refuses special tokens in text (tiktoken's default)
                enc.encode(text)
            checked += 1
        for key in ("ids", "ids_as_ordinary_text", "ids_allowed_special_all"):
            if key in case:
                assert decode(case[key]) == text, (key, text)
    assert checked >= len(cases)


def test_encoding_facts(reference):
    enc = get_tokenizer()
    facts = reference["encoding"]
    assert enc.n_vocab == VOCAB_SIZE == facts["n_vocab"] == 50257
    assert enc.eot_token == EOT_TOKEN == facts["eot_token"] == 50256
    assert EOT_STRING == facts["eot_string"]
    assert enc.encode(EOT_STRING, allowed_special="all") == [EOT_TOKEN]
    assert enc.decode([EOT_TOKEN]) == EOT_STRING
    assert enc._pat_str == facts["pat_str"]
    assert get_tokenizer() is enc  # cached


def test_decode_round_trip(shakespeare_head):
    text = shakespeare_head.read_text(encoding="utf-8")[:20_000]
    samples = [text, "héllo wörld — ✓ 日本語 🙂", "  leading and trailing spaces  ", "tabs\tand\nnewlines\r\n", ""]
    for s in samples:
        ids = encode(s)
        assert all(0 <= i < EOT_TOKEN for i in ids)
        assert decode(ids) == s


def test_unknown_tokenizer_name():
    from gpt2lab.errors import UserError

    with pytest.raises(UserError, match="unknown tokenizer"):
        get_tokenizer("cl100k_base")


def test_shipped_vocab_hash_and_shared_copy():
    shipped = Path(vocab_path()).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == VOCAB_SHA256
    # the shared copy of OpenAI's file (r50k_base.tiktoken), by its hash: byte for byte the same
    assert VOCAB_SHA256 == gpt2_tokenizer_sha256()["gpt2.tiktoken"]


def openai_gpt2_files(directory: Path) -> Path:
    """OpenAI's encoder.json and vocab.bpe, rebuilt in ``directory`` from the shipped vocabulary (their
    sha256 checked against the originals', so they are those files byte for byte)."""
    from gpt2lab.hf import write_tokenizer_files

    directory.mkdir()
    write_tokenizer_files(directory)
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    (directory / "encoder.json").write_text(json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1]))))
    (directory / "merges.txt").rename(directory / "vocab.bpe")
    for name in ("encoder.json", "vocab.bpe"):
        digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        assert digest == gpt2_tokenizer_sha256()[name], f"rebuilt {name} is not OpenAI's"
    return directory


@pytest.mark.slow
def test_build_vocab_reproduces_shipped_file(tmp_path):
    src = openai_gpt2_files(tmp_path / "openai")
    out = tmp_path / "gpt2.tiktoken"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_vocab.py"), str(src / "encoder.json"), str(src / "vocab.bpe"), str(out)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == Path(vocab_path()).read_bytes()


@pytest.mark.slow
def test_damaged_vocab_is_user_error(tmp_path):
    # A copy of the package with one byte of the vocabulary changed, imported in a fresh process.
    pkg = tmp_path / "site" / "gpt2lab"
    shutil.copytree(Path(tk.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.gz"))
    vocab = pkg / "assets" / tk.VOCAB_FILE
    data = bytearray(vocab.read_bytes())
    data[-3] = ord("7") if data[-3] != ord("7") else ord("8")  # a rank digit of the last line
    vocab.write_bytes(bytes(data))
    code = (
        "import gpt2lab, sys\n"
        "from gpt2lab.errors import UserError\n"
        "from gpt2lab.tokenizer import get_tokenizer\n"
        f"assert gpt2lab.__file__.startswith({str(pkg)!r}), gpt2lab.__file__\n"
        "try:\n    get_tokenizer()\nexcept UserError as e:\n    print('USERERROR', e); sys.exit(0)\n"
        "print('loaded'); sys.exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(pkg.parent), "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "USERERROR" in r.stdout and str(vocab) in r.stdout and "damaged" in r.stdout
