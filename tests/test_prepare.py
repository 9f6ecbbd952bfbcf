import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import quiet, write_wiki_jsonl
from gpt2lab.data.prepare import prepare
from gpt2lab.data.shards import find_shards, read_shard, write_shard
from gpt2lab.errors import UserError
from gpt2lab.tokenizer import EOT_TOKEN, VOCAB_SHA256, get_tokenizer


def stream(out_dir, split):
    return np.concatenate([np.asarray(read_shard(p)) for p in find_shards(out_dir, split)])


def full_stream(out_dir, manifest):
    parts = [stream(out_dir, "val")] if manifest["tokens"]["val"] else []
    return np.concatenate(parts + [stream(out_dir, "train")])


@pytest.fixture(scope="module")
def shakespeare(shakespeare_head):
    return shakespeare_head


@pytest.fixture(scope="module")
def wiki_head(tmp_path_factory):
    return write_wiki_jsonl(tmp_path_factory.mktemp("wiki") / "wiki_head.jsonl", 300)


def test_tinyshakespeare(shakespeare, tmp_path):
    out = tmp_path / "out"
    m = prepare([shakespeare], out, val_fraction=0.1, shard_tokens=6_000, workers=1, log=quiet)
    text = shakespeare.read_text(encoding="utf-8")
    n = len(get_tokenizer().encode_ordinary(text)) + 1  # one document, one EOT before it
    assert m["tokens"]["total"] == n
    assert m["tokens"]["val"] == round(0.1 * n)
    assert m["tokens"]["val"] + m["tokens"]["train"] == n
    assert m["documents"] == {"kept": 1, "empty": 0, "invalid_utf8": 0}
    val, train = stream(out, "val"), stream(out, "train")
    assert len(val) == m["tokens"]["val"] and len(train) == m["tokens"]["train"]
    whole = np.concatenate([val, train])
    assert whole[0] == EOT_TOKEN and (whole == EOT_TOKEN).sum() == 1
    assert get_tokenizer().decode(whole[1:].tolist()) == text
    # shard layout: every shard but the last of a split is full
    names = [s["name"] for s in m["shards"]]
    assert names[0] == "val_000000.bin" and "train_000003.bin" in names
    assert all(s["tokens"] <= 6_000 for s in m["shards"])
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["manifest.json"])
    # manifest on disk equals the returned one, and its hashes match the files
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["tokenizer"] == "gpt2" and m["vocab_sha256"] == VOCAB_SHA256
    for s in m["shards"]:
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
        assert len(read_shard(out / s["name"])) == s["tokens"]


def test_workers_do_not_change_output(wiki_head, tmp_path):
    m1 = prepare([wiki_head], tmp_path / "w1", shard_tokens=50_000, workers=1, log=quiet)
    m2 = prepare([wiki_head], tmp_path / "w2", shard_tokens=50_000, workers=2, log=quiet)
    assert m1 == m2
    assert m1["documents"]["kept"] == 300
    assert len(m1["shards"]) > 2
    for s in m1["shards"]:
        assert (tmp_path / "w1" / s["name"]).read_bytes() == (tmp_path / "w2" / s["name"]).read_bytes()
    # the stream is EOT doc EOT doc ...
    whole = full_stream(tmp_path / "w1", m1)
    docs = [json.loads(line)["text"] for line in wiki_head.read_text(encoding="utf-8").splitlines()]
    enc = get_tokenizer()
    expected = np.concatenate([np.array([EOT_TOKEN] + enc.encode_ordinary(d)) for d in docs])
    np.testing.assert_array_equal(whole, expected)


def test_txt_doc_splits_gz_and_globs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("one\ntwo\n\n\nthree\n\n")
    with gzip.open(src / "b.txt.gz", "wt") as f:
        f.write("four\n   \nfive\nsix\n")
    enc = get_tokenizer()

    def docs_of(m, out):
        toks = full_stream(out, m).tolist()
        pieces, cur = [], None
        for t in toks:
            if t == EOT_TOKEN:
                if cur is not None:
                    pieces.append(cur)
                cur = []
            else:
                cur.append(t)
        pieces.append(cur)
        return [enc.decode(p) for p in pieces]

    glob = str(src / "*.txt*")
    m = prepare([glob], tmp_path / "line", doc_split="line", val_fraction=0, workers=1, log=quiet)
    assert docs_of(m, tmp_path / "line") == ["one", "two", "three", "four", "five", "six"]
    assert m["documents"] == {"kept": 6, "empty": 4, "invalid_utf8": 0}
    assert not list((tmp_path / "line").glob("val_*"))

    m = prepare([glob], tmp_path / "blank", doc_split="blank", val_fraction=0, workers=1, log=quiet)
    assert docs_of(m, tmp_path / "blank") == ["one\ntwo", "three", "four", "five\nsix"]

    m = prepare([glob], tmp_path / "file", doc_split="file", val_fraction=0, workers=1, log=quiet)
    assert docs_of(m, tmp_path / "file") == ["one\ntwo\n\n\nthree\n\n", "four\n   \nfive\nsix\n"]


def test_val_fraction_zero_warns(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    msgs = []
    m = prepare([tmp_path / "a.txt"], tmp_path / "out", val_fraction=0, workers=1, log=msgs.append)
    assert m["tokens"]["val"] == 0 and any("warning" in s and "val_fraction" in s for s in msgs)
    assert [s["split"] for s in m["shards"]] == ["train"]


def test_too_few_tokens_for_val(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(UserError, match="too few for a validation split.*a larger --val-fraction"):  # the flag
        prepare([tmp_path / "a.txt"], tmp_path / "out", val_fraction=0.1, workers=1, log=quiet)


def test_invalid_utf8_and_empty_counted(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(
        b'{"text": "fine"}\n'
        b'{"text": "bad \xff\xfe bytes"}\n'
        b'{"text": ""}\n'
        b'\n'
        b'{"text": "lone \\ud800 surrogate"}\n'
        b'{"text": "  "}\n'
    )
    m = prepare([p], tmp_path / "out", val_fraction=0, workers=1, log=quiet)
    assert m["documents"] == {"kept": 3, "empty": 2, "invalid_utf8": 2}
    text = get_tokenizer().decode(full_stream(tmp_path / "out", m).tolist())
    assert "bad \ufffd\ufffd bytes" in text and "lone ? surrogate" in text


def test_jsonl_missing_key(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(UserError, match=r"docs\.jsonl:2: no 'text' key"):
        prepare([p], tmp_path / "out", workers=1, log=quiet)
    p.write_text('{"body": "a", "id": 1}\n{"body": "b"}\n')
    m = prepare([p], tmp_path / "out2", text_key="body", val_fraction=0, workers=1, log=quiet)
    assert m["documents"]["kept"] == 2
    p.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(UserError, match=r"docs\.jsonl:2: invalid JSON"):
        prepare([p], tmp_path / "out3", workers=1, log=quiet)


def test_missing_inputs(tmp_path):
    with pytest.raises(UserError, match="input file .*nope.txt not found"):
        prepare([tmp_path / "nope.txt"], tmp_path / "out", log=quiet)
    with pytest.raises(UserError, match=r"glob '.*\*\.jsonl' matches no files"):
        prepare([str(tmp_path / "*.jsonl")], tmp_path / "out", log=quiet)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(UserError, match="x.csv: unknown input format"):
        prepare([tmp_path / "x.csv"], tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()
    (tmp_path / "a.txt").write_text("some text")
    for out in (tmp_path / "a.txt", tmp_path / "a.txt" / "out"):  # the output folder, or a parent, is a file
        with pytest.raises(UserError, match=r"a.txt is a file, not a folder"):
            prepare([tmp_path / "a.txt"], out, log=quiet)


def test_refuses_existing_shards_unless_overwrite(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("some text to tokenize " * 100)
    out = tmp_path / "out"
    prepare([src], out, shard_tokens=100, workers=1, log=quiet)
    n_before = len(list(out.glob("train_*.bin")))
    with pytest.raises(UserError, match="already holds shards.*overwrite"):
        prepare([src], out, workers=1, log=quiet)
    m = prepare([src], out, workers=1, overwrite=True, log=quiet)
    assert n_before > 1
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train_000000.bin", "val_000000.bin"]
    assert m["tokens"]["total"] == sum(s["tokens"] for s in m["shards"])
    # a foreign shard alone also blocks
    other = tmp_path / "other"
    write_shard(other / "fineweb_train_000000.bin", np.arange(10))
    with pytest.raises(UserError, match="already holds shards"):
        prepare([src], other, workers=1, log=quiet)


def test_different_tokenizer_manifest(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("some text " * 100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"tokenizer": "llama", "vocab_sha256": "00"}))
    with pytest.raises(UserError, match="different tokenizer"):
        prepare([src], out, workers=1, overwrite=True, log=quiet)


def large_vocab_tokenizer(small: Path, out: Path, text: str) -> Path:
    """A tokenizer of over 65,536 tokens, made cheaply: a small trained BPE, filler tokens that never occur, then
    every word of ``text`` as one token past id 65,535 (tiktoken takes a piece that is a whole token as that token)."""
    from gpt2lab.tokenizer import load_tokenizer, write_folder

    ranks = dict(load_tokenizer(small).enc._mergeable_ranks)
    filler = 1 << 16
    while len(ranks) < filler:
        ranks[b"\x00\x01" + len(ranks).to_bytes(3, "big")] = len(ranks)
    for word in sorted(set(re.findall(r" ?[A-Za-z]+", text))):
        ranks.setdefault(word.encode(), len(ranks))
    out.mkdir()
    write_folder(out, ranks, name="big", pattern="gpt2", pat_str=load_tokenizer(small).enc._pat_str)
    return out


def test_vocab_over_65535_round_trips_through_uint32_shards(trained_tokenizer, shakespeare, tmp_path):
    from gpt2lab.data.loader import TokenLoader
    from gpt2lab.tokenizer import load_tokenizer

    text = shakespeare.read_text(encoding="utf-8")
    tok = load_tokenizer(large_vocab_tokenizer(trained_tokenizer, tmp_path / "big", text))
    assert tok.n_vocab > 66_000 and tok.eot_token == tok.n_vocab - 1
    docs = tmp_path / "docs.txt"
    docs.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    m = prepare([docs], out, val_fraction=0.1, shard_tokens=5_000, doc_split="blank", workers=1, tokenizer=tok.folder,
                log=quiet)
    assert m["token_dtype"] == "uint32" and m["vocab_size"] == tok.n_vocab and m["vocab_sha256"] == tok.sha256
    assert m["tokenizer_path"] == str(tok.folder)
    for p in find_shards(out, "train") + find_shards(out, "val"):
        header = np.fromfile(p, dtype="<i4", count=3)
        assert header[1] == 2  # version 2: uint32 tokens
    ids = full_stream(out, m)
    assert ids.dtype == np.uint32 and int(ids.max()) == tok.eot_token
    assert (ids > 65_535).sum() > 1000  # the words the small BPE lacked (1,866 of 26,069 tokens)
    blocks = [b for b in text.split("\n\n") if b.strip()]
    pieces = np.split(ids, np.flatnonzero(ids == tok.eot_token))[1:]  # each starts with the EOT before its document
    assert [tok.decode(p[1:]) for p in pieces] == [b.rstrip("\r\n") for b in blocks]
    x, y = TokenLoader(out, "train", 4, 32).next_batch()
    assert int(x.max()) > 65_535 and torch.equal(x[:, 1:], y[:, :-1])
