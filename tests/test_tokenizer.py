import functools
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

from cli_helpers import gpt2_tokenizer_sha256
from gpt2lab import tokenizer as tk
from gpt2lab.tokenizer import EOT_STRING, EOT_TOKEN, VOCAB_SHA256, VOCAB_SIZE, decode, encode, get_tokenizer, vocab_path

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
    assert facts["eot_string"] == EOT_STRING
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
    assert gpt2_tokenizer_sha256()["gpt2.tiktoken"] == VOCAB_SHA256


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
        [sys.executable, str(REPO / "tools" / "build_vocab.py"), str(src / "encoder.json"), str(src / "vocab.bpe"),
         str(out)],
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


# --- your own tokenizer (gpt2lab/tokenizer_train.py) -------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402

from cli_helpers import DATA, TOKENIZER_CORPUS, gpt2lab, held_out_texts, one_line_error  # noqa: E402
from gpt2lab.errors import UserError  # noqa: E402
from gpt2lab.tokenizer import META_FILE, RANKS_FILE, clean_surrogates, load_tokenizer  # noqa: E402

ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=200)  # every code point, surrogates too
VALID_TEXT = st.text(max_size=200)  # hypothesis leaves lone surrogates out by default


def hf_trained(vocab_size=8192):
    """The tokenizers object trained the way `tokenizer train` trains, on the same corpus."""
    from gpt2lab.tokenizer_train import corpus_texts, train_bpe

    return train_bpe(corpus_texts(list(TOKENIZER_CORPUS), "file", "text", [0, 0, 0, 0]), vocab_size)


@pytest.fixture(scope="module")
def own(trained_tokenizer):
    return load_tokenizer(trained_tokenizer)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
def test_round_trip_arbitrary_unicode(own, text):
    """decode(encode(x)) == x for valid Unicode; lone surrogates come back as U+FFFD (a pair as its character)."""
    for tok in (own, load_tokenizer("gpt2")):
        ids = tok.encode(text)
        assert all(0 <= i < tok.eot_token for i in ids)
        assert tok.decode(ids) == clean_surrogates(text)
    if clean_surrogates(text) == text:
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_surrogates_as_documented(own):
    for text, back in [("a\ud800b", "a\ufffdb"), ("\udfff", "\ufffd"), ("x\ud83d\ude00y", "x\U0001F600y"),
                       ("ok ✓ 日本", "ok ✓ 日本")]:
        assert clean_surrogates(text) == back
        assert own.decode(own.encode(text)) == back


def test_trained_twice_is_identical(trained_tokenizer, tmp_path):
    from gpt2lab.tokenizer_train import train_tokenizer

    again = train_tokenizer(list(TOKENIZER_CORPUS), 8192, tmp_path / "tok8k", log=lambda _m: None)
    for name in (RANKS_FILE, META_FILE):
        assert (tmp_path / "tok8k" / name).read_bytes() == (trained_tokenizer / name).read_bytes(), name
    assert again.sha256 == load_tokenizer(trained_tokenizer).sha256
    assert again.n_vocab == 8192 and again.eot_token == 8191


def test_folder_is_what_the_trainer_made(own):
    """The saved ranks are the trainer's vocabulary, and tiktoken encodes as the trainer's object does."""
    from gpt2lab.tokenizer_train import hf_ranks

    hf = hf_trained()
    assert hf_ranks(hf) == own.enc._mergeable_ranks
    assert hf.token_to_id("<|endoftext|>") == own.eot_token == 8191
    texts = held_out_texts() + [(DATA / "tinyshakespeare_head.txt").read_text(encoding="utf-8")]
    for text in texts:
        assert hf.encode(text).ids == own.encode(text), text
    assert sum(len(own.encode(t)) for t in texts) > 20_000


def test_cl100k_pattern_trains_and_encodes_like_the_trainer(tmp_path):
    """The other named pattern: the tokenizers trainer (Oniguruma) and tiktoken split text the same way."""
    from gpt2lab.tokenizer import PATTERNS
    from gpt2lab.tokenizer_train import corpus_texts, train_bpe, train_tokenizer

    tok = train_tokenizer(list(TOKENIZER_CORPUS), 2000, tmp_path / "cl", pattern="cl100k", log=lambda _m: None)
    assert tok.pattern == "cl100k" and tok.enc._pat_str == PATTERNS["cl100k"]
    hf = train_bpe(corpus_texts(list(TOKENIZER_CORPUS), "file", "text", [0, 0, 0, 0]), 2000, "cl100k")
    texts = held_out_texts() + ["year 2019: 1234567 items\r\n\n  (quoted) 'LL 'Re"]
    for text in texts:
        assert hf.encode(text).ids == tok.encode(text), text
    # cl100k's pattern: numbers in groups of up to three digits, in training too
    assert [w for w, _ in hf.pre_tokenizer.pre_tokenize_str("1234567")] == ["123", "456", "7"]

    @settings(max_examples=150, deadline=None)
    @given(VALID_TEXT)
    def same(text):
        assert hf.encode(text).ids == tok.encode(text)

    same()
    transformers = pytest.importorskip("transformers")
    from gpt2lab.hf import write_tokenizer_files

    (tmp_path / "hf").mkdir()
    write_tokenizer_files(tmp_path / "hf", 64, tok)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in texts:
        assert auto(text)["input_ids"] == tok.encode(text), text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=VALID_TEXT)
def test_loaded_encodes_like_the_trainer_on_any_text(own, text):
    assert hf_trained_cached().encode(text).ids == own.encode(text)


@functools.lru_cache(maxsize=1)
def hf_trained_cached():
    return hf_trained()


def test_sha256_is_the_manifest_vocab_hash(own):
    """The folder's sha256 is the one prepare records (vocab_sha256 of the tiktoken Encoding), and the rank file's."""
    from gpt2lab.data.prepare import vocab_sha256

    assert own.sha256 == vocab_sha256(own.enc) == hashlib.sha256((own.folder / RANKS_FILE).read_bytes()).hexdigest()
    assert load_tokenizer(own.folder) is own  # cached while the files are unchanged


def test_stats(own):
    from gpt2lab.tokenizer_train import tokenizer_stats

    rows = tokenizer_stats([DATA / "lambada_test_plain_text_head.txt"], ["gpt2", own.folder], doc_split="line")
    texts = [t for t in (DATA / "lambada_test_plain_text_head.txt").read_text(encoding="utf-8").splitlines()
             if t.strip()]
    n_bytes = sum(len(t.encode()) for t in texts)
    for row, tok in zip(rows, (load_tokenizer("gpt2"), own)):
        n_tokens = sum(len(tok.encode(t)) for t in texts)
        assert (row["bytes"], row["tokens"], row["documents"]) == (n_bytes, n_tokens, len(texts))
        assert row["bytes_per_token"] == pytest.approx(n_bytes / n_tokens) and row["tokens_per_s"] > 0


def test_train_errors_leave_nothing(tmp_path):
    from gpt2lab.tokenizer_train import train_tokenizer

    out = tmp_path / "tok"
    cases = [
        ((TOKENIZER_CORPUS, 256), "at least 257"),
        ((TOKENIZER_CORPUS, 200_000), "only make a vocabulary of"),
        (([tmp_path / "missing.txt"], 1000), "missing.txt not found"),
        ((TOKENIZER_CORPUS, 300), None),  # pattern below
    ]
    for (inputs, size), match in cases[:3]:
        with pytest.raises(UserError, match=match):
            train_tokenizer(list(inputs), size, out, log=lambda _m: None)
        assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="unknown pre-tokenisation pattern 'p50k'"):
        train_tokenizer(list(TOKENIZER_CORPUS), 300, out, pattern="p50k", log=lambda _m: None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: invalid JSON"):
        train_tokenizer([bad], 300, out, log=lambda _m: None)
    assert not out.exists()
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        train_tokenizer(list(TOKENIZER_CORPUS), 300, out, log=lambda _m: None)
    assert [p.name for p in out.iterdir()] == ["keep"]


def test_damaged_folder_is_user_error(trained_tokenizer, tmp_path):
    def copy(name):
        d = tmp_path / name
        shutil.copytree(trained_tokenizer, d)
        return d

    d = copy("flipped")
    data = bytearray((d / RANKS_FILE).read_bytes())
    data[5] = ord("A") if data[5] != ord("A") else ord("B")
    (d / RANKS_FILE).write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{d / RANKS_FILE}: sha256 differs .* train the tokenizer again"):
        load_tokenizer(d)
    d = copy("no-ranks")
    (d / RANKS_FILE).unlink()
    with pytest.raises(UserError, match=f"{d}: {RANKS_FILE} is missing"):
        load_tokenizer(d)
    d = copy("bad-json")
    (d / META_FILE).write_text("{not json")
    with pytest.raises(UserError, match=f"{d / META_FILE}: not valid JSON"):
        load_tokenizer(d)
    d = copy("wrong-size")
    meta = json.loads((d / META_FILE).read_text())
    meta["vocab_size"] += 1
    meta["special_tokens"]["<|endoftext|>"] += 1
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"{d / RANKS_FILE}: expected ranks 0..8191 once each for vocab_size 8193"):
        load_tokenizer(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"{empty}: not a tokenizer folder"):
        load_tokenizer(empty)
    with pytest.raises(UserError, match="unknown tokenizer .*no such folder"):
        load_tokenizer(tmp_path / "nowhere")


def edited_copy(folder: Path, dest: Path, **changes) -> Path:
    """A copy of a tokenizer folder with fields of its gpt2lab-tokenizer.json changed (None: removed)."""
    shutil.copytree(folder, dest)
    meta = json.loads((dest / META_FILE).read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (dest / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return dest


DROPS_TEXT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\s+(?!\S)|\s+"""  # GPT-2's without digits and punctuation


@pytest.mark.parametrize("pat_str", [r"(a+)+$", DROPS_TEXT, tk.PATTERNS["cl100k"]], ids=["redos", "drops", "cl100k"])
def test_an_edited_pattern_is_refused(trained_tokenizer, tmp_path, pat_str):
    """pat_str changes what the tokenizer outputs: an edit is refused on load, whatever else was edited with it."""
    d = edited_copy(trained_tokenizer, tmp_path / "a", pat_str=pat_str)  # 'pattern' still names gpt2's
    with pytest.raises(UserError, match=rf"{d / META_FILE}: 'pat_str' is not the pre-tokenisation pattern 'gpt2'"):
        load_tokenizer(d)
    d = edited_copy(trained_tokenizer, tmp_path / "b", pat_str=pat_str, pattern="custom")  # recorded sha256 differs
    with pytest.raises(UserError, match=rf"{d / META_FILE}: its recorded identity 'sha256' differs .* edited"):
        load_tokenizer(d)
    d = edited_copy(trained_tokenizer, tmp_path / "c", pat_str=pat_str, pattern="custom", sha256=None)  # as before
    if pat_str == tk.PATTERNS["cl100k"]:  # a pattern that keeps all text: another tokenizer
        assert load_tokenizer(d).sha256 != load_tokenizer(trained_tokenizer).sha256
    else:
        with pytest.raises(UserError, match=rf"{d / META_FILE}: 'pat_str' loses text"):
            load_tokenizer(d)


def test_identity_covers_ranks_pattern_and_special_tokens(trained_tokenizer, tmp_path):
    from gpt2lab.data.prepare import vocab_sha256

    own = load_tokenizer(trained_tokenizer)
    meta = json.loads((trained_tokenizer / META_FILE).read_text(encoding="utf-8"))
    assert meta["sha256"] == own.sha256 == meta["ranks_sha256"]  # GPT-2's pattern: the ranks' sha256, as before
    assert load_tokenizer("gpt2").sha256 == VOCAB_SHA256 == vocab_sha256(get_tokenizer())
    import tiktoken

    gpt2 = get_tokenizer()
    copy = tiktoken.Encoding(name="copy", pat_str=gpt2._pat_str, mergeable_ranks=gpt2._mergeable_ranks,
                             special_tokens={EOT_STRING: EOT_TOKEN})
    assert vocab_sha256(copy) == VOCAB_SHA256  # the same tokenizer, however it was made
    other = edited_copy(trained_tokenizer, tmp_path / "cl", pattern="cl100k", pat_str=tk.PATTERNS["cl100k"],
                        sha256=None)
    tok = load_tokenizer(other)
    assert tok.sha256 not in (own.sha256, meta["ranks_sha256"]) and tok.sha256 == vocab_sha256(tok.enc)
    with pytest.raises(UserError, match="tokenizer mismatch"):
        tk.check_same(own, tok, "the data", "data.tokenizer")
    assert tk.identity(own.sha256, r50k_pat(), {EOT_STRING: 8191, "<|pad|>": 8192}, 8191) != own.sha256
    d = edited_copy(trained_tokenizer, tmp_path / "sp", special_tokens={EOT_STRING: 8191, "<|pad|>": 8192})
    with pytest.raises(UserError, match="'special_tokens' must be <|endoftext|> alone"):
        load_tokenizer(d)
    d = edited_copy(trained_tokenizer, tmp_path / "sha", sha256=["not", "a", "string"])
    with pytest.raises(UserError, match="'sha256' is not a string"):
        load_tokenizer(d)


def r50k_pat() -> str:
    return get_tokenizer()._pat_str


def test_training_refuses_data_of_the_tokenizer_before_its_pattern_changed(trained_tokenizer, tmp_path):
    """Data prepared with a folder, then its pattern edited (and its record dropped): another tokenizer."""
    from cli_helpers import micro_cfg
    from gpt2lab.config import load_config
    from gpt2lab.data.prepare import prepare
    from gpt2lab.train import train

    tok = tmp_path / "tok"
    shutil.copytree(trained_tokenizer, tok)
    prepare([DATA / "tinyshakespeare_head.txt"], tmp_path / "data", tokenizer=str(tok), workers=1, log=lambda _m: None)
    edited_copy(trained_tokenizer, tmp_path / "edited", pattern="cl100k", pat_str=tk.PATTERNS["cl100k"], sha256=None)
    cfg = micro_cfg(tmp_path / "data", tmp_path / "run", f"data.tokenizer={tmp_path / 'edited'}")
    with pytest.raises(UserError, match="tokenizer mismatch"):
        train(cfg, log=lambda _m: None)
    assert load_config(None, [f"data.dir={tmp_path / 'data'}"]).data.tokenizer.endswith("tokenizer")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab1 ,.'\n\t\ré日🙂")), max_size=300), limit=st.integers(4, 40))
def test_long_documents_train_in_pieces_that_split_as_the_whole(text, limit):
    """split_long's pieces: each at most ``limit`` long, together the text, and the pattern's pieces of them are
    those of the whole text (GPT-2's and cl100k's patterns), unless a piece had to be cut hard (no word start)."""
    pytest.importorskip("tokenizers")
    from gpt2lab.tokenizer_train import split_long

    pieces = list(split_long(text, limit))
    assert "".join(pieces) == text and all(len(p) <= limit for p in pieces) and len(pieces) >= 1
    cuts = list(itertools.accumulate(len(p) for p in pieces[:-1]))
    word_starts = [c for c in cuts if text[c] == " " and not text[c - 1].isspace() and c + 1 < len(text)
                   and not text[c + 1].isspace()]
    assert all(len(p) == limit for p, c in zip(pieces, cuts) if c not in word_starts)  # hard cuts: only when full
    if word_starts == cuts:
        for pattern in ("gpt2", "cl100k"):
            split = hf_split(pattern)
            assert [w for p in pieces for w in split(p)] == split(text), (pattern, pieces)


@functools.lru_cache(maxsize=2)
def hf_split(pattern):
    from gpt2lab.tokenizer_train import hf_bpe

    tok = hf_bpe(tk.PATTERNS[pattern])
    return lambda t: [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(t)]


def test_a_long_run_without_spaces_is_cut_at_the_limit():
    from gpt2lab.tokenizer_train import split_long

    assert list(split_long("x" * 10, 4)) == ["xxxx", "xxxx", "xx"]
    assert list(split_long("aaaa bbbb cccc", 8)) == ["aaaa", " bbbb", " cccc"]
    assert list(split_long("short", 8)) == ["short"] and list(split_long("", 8)) == [""]


@pytest.mark.slow
def test_training_on_one_long_line_holds_a_few_times_the_line_in_memory(tmp_path):
    """One 8 MB line: the trainer held ~90 bytes per character at once (a 50 MB line peaked at 4.4 GB); fed in pieces
    it holds a few copies of the text. Measured as the process's own peak resident memory."""
    pytest.importorskip("tokenizers")
    line = tmp_path / "line.txt"
    words = (DATA / "tinyshakespeare_head.txt").read_text(encoding="utf-8").split()
    line.write_text(" ".join(words * (8_000_000 // sum(len(w) + 1 for w in words) + 1))[:8_000_000], encoding="utf-8")
    code = ("import resource, sys\n"
            "from gpt2lab.tokenizer_train import train_tokenizer\n"
            "import tokenizers, tiktoken\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"train_tokenizer([{str(line)!r}], 600, {str(tmp_path / 'tok')!r}, log=lambda m: None)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "RAYON_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    grown = int(r.stdout.split()[-1])
    assert grown < 150 * 2**20, f"peak memory grew by {grown / 2**20:.0f} MiB for an 8 MB line"


def test_config_vocab_follows_tokenizer(trained_tokenizer):
    from gpt2lab.config import load_config

    cfg = load_config(None, [f"data.tokenizer={trained_tokenizer}", "preset=micro"])
    assert (cfg.model.vocab_size, cfg.model.padded_vocab_size) == (8192, 8192)
    cfg = load_config(None, [f"data.tokenizer={trained_tokenizer}", "vocab_size=8000"])
    assert (cfg.model.vocab_size, cfg.model.padded_vocab_size) == (8000, 8000)
    assert (load_config().model.vocab_size, load_config().model.padded_vocab_size) == (50257, 50304)
    with pytest.raises(UserError, match="config key 'data.tokenizer' on the command line: unknown tokenizer"):
        load_config(None, ["data.tokenizer=/no/such/tokenizer"])


def test_train_checks_the_data_tokenizer(trained_tokenizer, small_shards, tmp_path):
    """small_shards are GPT-2's: training them with another tokenizer is an error naming both."""
    from cli_helpers import micro_cfg
    from gpt2lab.train import train

    cfg = micro_cfg(small_shards, tmp_path / "run", f"data.tokenizer={trained_tokenizer}")
    with pytest.raises(UserError, match=rf"tokenizer mismatch: {small_shards} was prepared with tokenizer 'gpt2' "
                                        rf"\(50,257 tokens.*data.tokenizer' is '{trained_tokenizer}' \(8,192 tokens"):
        train(cfg, log=lambda _m: None)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_end_to_end_own_tokenizer(tmp_path):
    """tokenizer train, prepare, train a few steps, sample, eval loss with an 8k vocabulary, from the command line;
    the checkpoint keeps working after the tokenizer folder is moved; a mismatch is a one-line error."""
    corpus = [str(p) for p in TOKENIZER_CORPUS]
    r = gpt2lab("tokenizer", "train", *corpus, "--vocab-size", 8192, "--out", "tok", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = gpt2lab("prepare", DATA / "tinyshakespeare_head.txt", "--tokenizer", "tok", "--out", "data", "--workers", 1,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["vocab_sha256"] == load_tokenizer(tmp_path / "tok").sha256 and manifest["vocab_size"] == 8192
    assert manifest["tokenizer"] == "tok" and manifest["token_dtype"] == "uint16"
    (tmp_path / "tok").rename(tmp_path / "tok-moved")  # the data keeps its own copy, the checkpoint too
    train = ["train", "data.dir=data", "train.run_dir=run", "model.preset=micro", "train.device=cpu",
             "train.dtype=float32", "train.micro_batch=4", "train.seq_len=32", "train.max_steps=4",
             "optim.warmup_steps=2", "eval.every=2", "eval.val_tokens=1024", "eval.sample_count=1",
             "eval.sample_tokens=4", "eval.lambada_every=0", "eval.lambada_items=4",
             f"eval.lambada_data={DATA / 'lambada_original_test_head.jsonl'}"]
    line = one_line_error(gpt2lab(*train, "data.tokenizer=gpt2", cwd=tmp_path))  # given, and not the data's
    assert "tokenizer mismatch" in line and "/tok'" in line and "'gpt2'" in line
    r = gpt2lab(*train, cwd=tmp_path)  # no data.tokenizer: the data's manifest knows it
    assert r.returncode == 0, r.stderr
    assert f"tokenizer {(tmp_path / 'data' / 'tokenizer').resolve()}: the one data/manifest.json records" in r.stdout
    assert "val loss" in r.stdout and "sample: " in r.stdout and "lambada acc" in r.stdout
    ckpt = next((tmp_path / "run" / "checkpoints").iterdir())
    assert (ckpt / "tokenizer" / RANKS_FILE).read_bytes() == (tmp_path / "tok-moved" / RANKS_FILE).read_bytes()
    r = gpt2lab("sample", "run", "--prompt", "First Citizen:", "--max-new-tokens", 8, "--seed", 1,
                "--temperature", 0, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from gpt2lab.generate import generate
    from gpt2lab.weights import load_pretrained

    tok = load_tokenizer(ckpt / "tokenizer")
    out = generate(load_pretrained(tmp_path / "run"), tok.encode("First Citizen:"), 8, temperature=0,
                   stop_token=tok.eot_token)[0]
    assert r.stdout == tok.decode(out) + "\n"  # the prompt and its continuation, with the checkpoint's 8k tokenizer
    r = gpt2lab("eval", "loss", "run", "--device", "cpu", "--tokens", 512, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["tokenizer"] == str(ckpt / "tokenizer") and 0 < result["loss"] < 10
    line = one_line_error(gpt2lab("sample", "run", "--tokenizer", "gpt2", "--device", "cpu", cwd=tmp_path))
    assert "tokenizer mismatch" in line and "'gpt2'" in line and "8,192 tokens" in line


@pytest.mark.slow
def test_cli_errors_and_no_tokenizers_library(trained_tokenizer, tmp_path):
    """Training without the tokenizers library says what to install; using a trained tokenizer needs only tiktoken."""
    block = "import sys; sys.modules['tokenizers'] = None; from gpt2lab.cli import main; sys.exit(main(sys.argv[1:]))"
    run = lambda *a: subprocess.run([sys.executable, "-c", block, *map(str, a)], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, cwd=tmp_path)
    line = one_line_error(run("tokenizer", "train", *TOKENIZER_CORPUS, "--vocab-size", 300, "--out", "t"))
    assert "pip install 'gpt2lab[tokenizer]'" in line and not (tmp_path / "t").exists()
    r = run("prepare", DATA / "tinyshakespeare_head.txt", "--tokenizer", trained_tokenizer, "--out", "d",
            "--workers", 1)
    assert r.returncode == 0, r.stderr
    r = run("tokenizer", "stats", DATA / "lambada_test_plain_text_head.txt", "--tokenizer", "gpt2",
            "--tokenizer", trained_tokenizer, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["vocab_size"] for row in rows] == [50257, 8192]
    line = one_line_error(gpt2lab("tokenizer", "train", DATA / "nope.jsonl", "--vocab-size", 1000, "--out", "t",
                                  cwd=tmp_path))
    assert "nope.jsonl not found" in line
    line = one_line_error(gpt2lab("tokenizer", "train", *TOKENIZER_CORPUS, "--vocab-size", 100, "--out", "t",
                                  cwd=tmp_path))
    assert "at least 257" in line and not (tmp_path / "t").exists()


def test_evaluations_use_the_checkpoint_tokenizer(trained_tokenizer, tmp_path):
    """HellaSwag and LAMBADA score with the tokenizer the checkpoint keeps; another --tokenizer is refused."""
    import torch

    from gpt2lab.checkpoint import save_checkpoint
    from gpt2lab.config import load_config
    from gpt2lab.evals.hellaswag import run_hellaswag
    from gpt2lab.evals.lambada import run_lambada, split_passage
    from gpt2lab.model import GPT

    cfg = load_config(None, ["preset=micro", f"data.tokenizer={trained_tokenizer}"])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", 1, GPT(cfg.model), cfg, {})
    own = load_tokenizer(trained_tokenizer)
    data = DATA / "lambada_test_plain_text_head.txt"
    summary = run_lambada(tmp_path / "run", variant="original", data=data, limit=6, device="cpu", out=tmp_path / "ev")
    assert summary["tokenizer"].endswith("tokenizer") and summary["items"] == 6
    records = [json.loads(line)
               for line in (tmp_path / "ev" / "lambada_original_examples.jsonl").read_text().splitlines()]
    passages = [t for t in data.read_text(encoding="utf-8").splitlines() if t.strip()]
    picked = [passages[i * len(passages) // 6] for i in range(6)]
    assert [r["tokens"] for r in records] == [len(own.encode(split_passage(p)[1])) for p in picked]
    summary = run_hellaswag(tmp_path / "run", data=DATA / "hellaswag_val_120.jsonl", limit=3, device="cpu",
                            out=tmp_path / "ev", style="completion")
    records = [json.loads(line) for line in (tmp_path / "ev" / "hellaswag_examples.jsonl").read_text().splitlines()]
    items = [json.loads(line) for line in (DATA / "hellaswag_val_120.jsonl").read_text().splitlines()]
    items = [items[i * len(items) // 3] for i in range(3)]
    assert [r["completion"]["tokens"] for r in records] == [[len(own.encode(" " + e)) for e in it["endings"]]
                                                            for it in items]
    with pytest.raises(UserError, match="tokenizer mismatch: model .* but --tokenizer is 'gpt2'"):
        run_lambada(tmp_path / "run", variant="original", data=data, limit=2, device="cpu", out=tmp_path / "ev",
                    tokenizer="gpt2")


def test_training_takes_the_datas_tokenizer_when_none_is_given(trained_tokenizer, tmp_path):
    """No data.tokenizer: the prepared folder's own copy (or the folder its manifest names), with the model's
    vocabulary following it; a folder tokenizer found nowhere is a one-line error saying what to pass."""
    from gpt2lab.config import load_config
    from gpt2lab.data.prepare import prepare

    tok = tmp_path / "tok"
    shutil.copytree(trained_tokenizer, tok)
    prepare([DATA / "tinyshakespeare_head.txt"], tmp_path / "data", tokenizer=str(tok), workers=1, log=lambda _m: None)
    cfg = load_config(None, [f"data.dir={tmp_path / 'data'}", "preset=micro"])
    assert cfg.data.tokenizer == str((tmp_path / "data" / "tokenizer").resolve())
    assert cfg.model.vocab_size == 8192 and any("the one" in n and "manifest.json records" in n for n in cfg.notes)
    shutil.rmtree(tmp_path / "data" / "tokenizer")  # then the folder the manifest names
    assert load_config(None, [f"data.dir={tmp_path / 'data'}"]).data.tokenizer == str(tok.resolve())
    shutil.rmtree(tok)
    with pytest.raises(UserError, match=r"prepared with tokenizer 'tok8k' .* give its folder as data.tokenizer=FOLDER"):
        load_config(None, [f"data.dir={tmp_path / 'data'}"])
    assert load_config(None, [f"data.dir={tmp_path / 'nothing'}"]).data.tokenizer == "gpt2"  # no data yet
