"""prepare on FineWeb-Edu-shaped data: local parquet/jsonl(.gz/.zst), the hub path, val splits, limits, uint32."""

import gzip
import json

import numpy as np
import pytest
import tiktoken

from cli_helpers import quiet, wiki_rows, write_wiki_jsonl
from gpt2lab.data import TokenLoader
from gpt2lab.data.prepare import VAL_BLOCK, prepare, vocab_sha256
from gpt2lab.data.shards import VERSION_U32, find_shards, read_shard
from gpt2lab.data.sources import HubSource
from gpt2lab.errors import UserError
from gpt2lab.tokenizer import EOT_TOKEN, VOCAB_SHA256, get_tokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

FINEWEB_COLUMNS = ["text", "id", "dump", "url", "language", "language_score", "token_count", "score", "int_score"]


def fineweb_rows(n):
    """n Wikipedia articles as rows in FineWeb-Edu's schema."""
    enc = get_tokenizer()
    rows = []
    for art in wiki_rows(n):
        rows.append({
            "text": art["text"], "id": f"<urn:uuid:{int(art['id']):032x}>", "dump": "CC-MAIN-2024-10",
            "url": "https://en.wikipedia.org/wiki/" + art["title"].replace(" ", "_"), "language": "en",
            "language_score": 0.95, "token_count": len(enc.encode_ordinary(art["text"])),
            "score": 3.2, "int_score": 3,
        })
    return rows


@pytest.fixture(scope="module")
def fineweb(tmp_path_factory):
    """The same 400 articles as parquet (2 files), .jsonl.gz and .jsonl.zst."""
    d = tmp_path_factory.mktemp("fineweb")
    rows = fineweb_rows(400)
    for i, part in enumerate((rows[:250], rows[250:])):
        table = pa.table({c: [r[c] for r in part] for c in FINEWEB_COLUMNS})
        pq.write_table(table, d / f"000_0000{i}.parquet", row_group_size=64)
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with gzip.open(d / "docs.jsonl.gz", "wb") as f:
        f.write(lines)
    (d / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    return d, [r["text"] for r in rows]


def expected_stream(texts):
    enc = get_tokenizer()
    return np.concatenate([np.array([EOT_TOKEN] + enc.encode_ordinary(t), dtype=np.int64) for t in texts])


def split_stream(out):
    """(val tokens, train tokens) of a prepared folder."""
    return [np.concatenate([np.zeros(0, np.int64)] + [np.asarray(read_shard(p)) for p in out.glob(f"{s}_*.bin")])
            if s == "val" else np.concatenate([np.asarray(read_shard(p)) for p in find_shards(out, s)])
            for s in ("val", "train")]


def shard_bytes(out, manifest):
    return {s["name"]: (out / s["name"]).read_bytes() for s in manifest["shards"]}


def test_all_sources_give_the_same_shards(fineweb, tmp_path):
    d, texts = fineweb
    opts = dict(val_tokens=20_000, shard_tokens=30_000, workers=1, log=quiet)
    ref = prepare([str(d / "*.parquet")], tmp_path / "pq", **opts)
    assert ref["documents"] == {"kept": 400, "empty": 0, "invalid_utf8": 0}
    val, train = split_stream(tmp_path / "pq")
    np.testing.assert_array_equal(np.concatenate([val, train]), expected_stream(texts))
    assert len(val) == 20_000 and [s["tokens"] for s in ref["shards"]][:2] == [20_000, 30_000]
    runs = {
        "gz": dict(inputs=[d / "docs.jsonl.gz"]),
        "zst": dict(inputs=[d / "docs.jsonl.zst"], workers=2),
        "hub-parquet": dict(hub=HubSource("parquet", None, "train",
                                          (str(d / "000_00000.parquet"), str(d / "000_00001.parquet")))),
        "hub-json": dict(hub=HubSource("json", None, "train", (str(d / "docs.jsonl.gz"),))),
    }
    for name, kw in runs.items():
        m = prepare(kw.pop("inputs", None), tmp_path / name, **{**opts, **kw})
        assert m["shards"] == ref["shards"], name
        assert m["tokens"] == ref["tokens"] and m["documents"] == ref["documents"]
        assert shard_bytes(tmp_path / name, m) == shard_bytes(tmp_path / "pq", ref)
    assert m["source"]["hub"]["name"] == "json" and ref["source"]["files"][0].endswith("000_00000.parquet")


def test_hub_defaults_to_first_shard_for_validation(fineweb, tmp_path):
    d, texts = fineweb
    hub = HubSource("parquet", None, "train", (str(d / "000_00000.parquet"),))
    m = prepare(hub=hub, out_dir=tmp_path / "o", shard_tokens=25_000, workers=1, log=quiet)
    assert m["options"]["val_tokens"] == 25_000 and m["tokens"]["val"] == 25_000
    assert [s["name"] for s in m["shards"]][:2] == ["val_000000.bin", "train_000000.bin"]


def test_missing_column(fineweb, tmp_path):
    d, _ = fineweb
    with pytest.raises(UserError, match=r"000_00000.parquet: no 'body' column \(columns: text, id, dump"):
        prepare([d / "000_00000.parquet"], tmp_path / "a", text_key="body", workers=1, log=quiet)
    hub = HubSource("parquet", None, "train", (str(d / "000_00000.parquet"),))
    with pytest.raises(UserError, match="hub dataset 'parquet' has no 'body' column"):
        prepare(hub=hub, out_dir=tmp_path / "b", text_key="body", workers=1, log=quiet)
    with pytest.raises(UserError, match="cannot open hub dataset 'no/such-dataset-here'"):
        prepare(hub=HubSource("no/such-dataset-here", None, "train", (str(tmp_path / "none.parquet"),)),
                out_dir=tmp_path / "c", workers=1, log=quiet)


def test_val_fraction_per_block(tmp_path):
    """Over 1M tokens, every VAL_BLOCK tokens and the last partial block give their first fraction to val."""
    src = write_wiki_jsonl(tmp_path / "wiki.jsonl", 7000)
    texts = [json.loads(line)["text"] for line in src.read_text(encoding="utf-8").splitlines()]
    m = prepare([src], tmp_path / "o", val_fraction=0.05, shard_tokens=400_000, workers=2, log=quiet)
    stream = expected_stream(texts)
    assert len(stream) > 2 * VAL_BLOCK
    blocks = [stream[i : i + VAL_BLOCK] for i in range(0, len(stream), VAL_BLOCK)]
    cut = [int(round(0.05 * len(b))) for b in blocks]
    val, train = split_stream(tmp_path / "o")
    np.testing.assert_array_equal(val, np.concatenate([b[:c] for b, c in zip(blocks, cut)]))
    np.testing.assert_array_equal(train, np.concatenate([b[c:] for b, c in zip(blocks, cut)]))
    assert m["tokens"] == {"val": len(val), "train": len(train), "total": len(stream)}
    assert all(s["tokens"] == 400_000 for s in [s for s in m["shards"] if s["split"] == "train"][:-1])


def test_max_docs_and_max_tokens(fineweb, tmp_path):
    d, texts = fineweb
    m = prepare([d / "docs.jsonl.gz"], tmp_path / "docs", max_docs=50, val_fraction=0.1, workers=2, log=quiet)
    assert m["documents"]["kept"] == 50 and m["tokens"]["total"] == len(expected_stream(texts[:50]))
    m = prepare([d / "docs.jsonl.gz"], tmp_path / "toks", max_tokens=12_345, val_tokens=345, workers=1, log=quiet)
    val, train = split_stream(tmp_path / "toks")
    np.testing.assert_array_equal(np.concatenate([val, train]), expected_stream(texts)[:12_345])
    assert m["documents"]["kept"] == np.count_nonzero(expected_stream(texts)[:12_345] == EOT_TOKEN) < len(texts)


def test_endoftext_inside_a_document_is_plain_text(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "before <|endoftext|> after"}) + "\n")
    m = prepare([tmp_path / "a.jsonl"], tmp_path / "o", val_fraction=0, workers=1, log=quiet)
    _, train = split_stream(tmp_path / "o")
    assert train.tolist() == [EOT_TOKEN] + get_tokenizer().encode_ordinary("before <|endoftext|> after")
    assert (train == EOT_TOKEN).sum() == 1 and m["documents"]["kept"] == 1


def test_damaged_compressed_input(fineweb, tmp_path):
    d, _ = fineweb
    for name in ("docs.jsonl.gz", "docs.jsonl.zst"):
        bad = tmp_path / name
        data = (d / name).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(UserError, match=rf"{name}: cannot read .*damaged"):
            prepare([bad], tmp_path / ("o" + name), workers=1, log=quiet)
        assert not (tmp_path / ("o" + name) / "manifest.json").exists()


@pytest.mark.parametrize("suffix", [".xz", ".gz"])
def test_corrupted_compressed_input_is_one_line(tmp_path, suffix):
    """Damaged inside (lzma and zlib raise their own error types), not only cut short."""
    import lzma

    text = "".join(f"line {i} " + "word " * 20 + "\n" for i in range(2000)).encode()
    if suffix == ".xz":
        data = bytearray(lzma.compress(text))
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
    else:
        data = bytearray(gzip.compress(text))
        data[10] = 0xFF  # the first deflate block's header after gzip's 10 bytes: a block type that does not exist
    bad = tmp_path / f"corpus.txt{suffix}"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"corpus.txt{suffix}: cannot read .*damaged"):
        prepare([bad], tmp_path / "o", workers=1, log=quiet)


def test_odd_text_values_and_names(tmp_path):
    """A JSON line with an invalid byte and a lone surrogate; a parquet column of bytes with an invalid
    byte (counted); a parquet or hub column of numbers (refused in one line); a file named like a glob."""
    line = b'{"text": "caf\xe9 \\ud800 ok"}\n'  # a raw 0xE9 byte, then the JSON escape of a lone surrogate
    (tmp_path / "odd[1].jsonl").write_bytes(line)
    (tmp_path / "odd1.jsonl").write_text(json.dumps({"text": "the other file"}) + "\n")  # matches odd[1] as a glob
    m = prepare([tmp_path / "odd[1].jsonl"], tmp_path / "a", val_fraction=0, workers=1, log=quiet)
    assert m["documents"] == {"kept": 1, "empty": 0, "invalid_utf8": 1}
    _, train = split_stream(tmp_path / "a")
    assert get_tokenizer().decode(train[1:].tolist()) == "caf\ufffd ? ok"
    pq.write_table(pa.table({"text": [b"caf\xe9", b"fine"], "id": [1, 2]}), tmp_path / "b.parquet")
    m = prepare([tmp_path / "b.parquet"], tmp_path / "b", val_fraction=0, workers=1, log=quiet)
    assert m["documents"] == {"kept": 2, "empty": 0, "invalid_utf8": 1}
    with pytest.raises(UserError, match="b.parquet: column 'id' holds int, not text"):
        prepare([tmp_path / "b.parquet"], tmp_path / "c", text_key="id", workers=1, log=quiet)
    hub = HubSource("parquet", None, "train", (str(tmp_path / "b.parquet"),))
    with pytest.raises(UserError, match="column 'id' holds int, not text"):
        prepare(hub=hub, out_dir=tmp_path / "d", text_key="id", workers=1, log=quiet)


def test_zstd_text_cut_short_is_an_error_and_many_frames_are_read(tmp_path):
    import zstandard

    docs = [f"document {i}: " + "word " * (50 + i) for i in range(40)]
    c = zstandard.ZstdCompressor()
    frames = b"".join(c.compress(("\n".join(docs[i : i + 10]) + "\n").encode()) for i in range(0, 40, 10))
    whole = tmp_path / "many.txt.zst"
    whole.write_bytes(frames)  # four frames, one after another (as `cat a.zst b.zst` makes)
    m = prepare([whole], tmp_path / "o", doc_split="line", val_fraction=0, workers=1, log=quiet)
    assert m["documents"]["kept"] == 40
    _, train = split_stream(tmp_path / "o")
    np.testing.assert_array_equal(train, expected_stream(docs))
    cut = tmp_path / "cut.txt.zst"
    cut.write_bytes(frames[:-7])  # a text file has no JSON to notice the cut: only the reader can
    with pytest.raises(UserError, match=r"cut\.txt\.zst: cannot read .*cut short.*damaged"):
        prepare([cut], tmp_path / "o2", doc_split="line", val_fraction=0, workers=1, log=quiet)
    padded = tmp_path / "padded.txt.zst"
    padded.write_bytes(frames + bytes(16))  # not zstd after the last frame
    with pytest.raises(UserError, match=r"padded\.txt\.zst: cannot read \(zstd: .*damaged"):
        prepare([padded], tmp_path / "o3", doc_split="line", val_fraction=0, workers=1, log=quiet)


def wide_gpt2():
    """GPT-2's BPE with the end-of-text token moved to id 70000: a vocabulary that needs uint32 shards."""
    gpt2 = get_tokenizer()
    ranks = {gpt2.decode_single_token_bytes(i): i for i in range(50256)}
    return tiktoken.Encoding(name="gpt2-wide", pat_str=gpt2._pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 70000})


def test_uint32_shards_for_large_vocabularies(fineweb, tmp_path):
    d, texts = fineweb
    enc = wide_gpt2()
    m = prepare([d / "docs.jsonl.gz"], tmp_path / "o", tokenizer=enc, val_fraction=0.1, shard_tokens=40_000,
                workers=2, log=quiet)
    assert m["token_dtype"] == "uint32" and m["eot_token"] == 70000 and m["vocab_size"] == 70001
    # GPT-2's ranks with another id for <|endoftext|>: another tokenizer (its identity covers the special tokens)
    assert m["tokenizer"] == "gpt2-wide" and m["vocab_sha256"] == vocab_sha256(enc) != VOCAB_SHA256
    raw = (tmp_path / "o" / "train_000000.bin").read_bytes()
    assert np.frombuffer(raw[:12], dtype="<i4")[1] == VERSION_U32
    val, train = split_stream(tmp_path / "o")
    stream = expected_stream(texts)
    stream[stream == EOT_TOKEN] = 70000
    np.testing.assert_array_equal(np.concatenate([val, train]), stream)
    x, y = TokenLoader(tmp_path / "o", "train", 2, 64).next_batch()
    assert x[0, 0].item() == train[0] and int(x.max()) <= 70000
    # a folder of GPT-2 shards refuses another tokenizer
    with pytest.raises(UserError, match="different tokenizer"):
        prepare([d / "docs.jsonl.gz"], tmp_path / "o", workers=1, overwrite=True, log=quiet)


def test_vocab_sha256_of_gpt2_matches_the_shipped_file():
    gpt2 = get_tokenizer()
    copy = tiktoken.Encoding(name="copy", pat_str=gpt2._pat_str, mergeable_ranks=gpt2._mergeable_ranks,
                             special_tokens={"<|endoftext|>": EOT_TOKEN})
    assert vocab_sha256(copy) == VOCAB_SHA256 == vocab_sha256(gpt2)
