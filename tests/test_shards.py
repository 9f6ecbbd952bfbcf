import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpt2lab.data.shards import HEADER_BYTES, MAGIC, find_shards, read_shard, write_shard
from gpt2lab.errors import UserError


def test_round_trip_and_header(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    path = tmp_path / "train_000000.bin"
    write_shard(path, tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == MAGIC and header[1] == 1 and header[2] == 5
    assert not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * 5
    got = read_shard(path)
    assert isinstance(got, np.memmap) and not got.flags.writeable
    assert got.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(got, tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["train_000000.bin"]  # no temp file left


def test_returned_sha256_matches_file(tmp_path):
    import hashlib

    path = tmp_path / "a_train.bin"
    digest = write_shard(path, np.arange(1000))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=arrays(np.uint16, st.integers(0, 300)))
def test_round_trip_property(tmp_path, arr):
    path = tmp_path / "prop_train.bin"
    write_shard(path, arr)
    got = read_shard(path)
    assert len(got) == len(arr)
    np.testing.assert_array_equal(np.asarray(got), arr)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_shards_get_the_mode_of_any_new_file(tmp_path, umask):
    """Written through a temporary file and renamed, a shard is as readable as other files the user
    makes (a shared data folder), not private to its writer."""
    old = os.umask(umask)
    try:
        write_shard(tmp_path / "train_000000.bin", np.arange(10))
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    assert (oct((tmp_path / "train_000000.bin").stat().st_mode & 0o777)
            == oct((tmp_path / "plain").stat().st_mode & 0o777))


def test_uint32_version(tmp_path):
    path = tmp_path / "big_train.bin"
    tokens = np.array([0, 70000, 2**32 - 1], dtype=np.uint64)
    write_shard(path, tokens, version=2)
    got = read_shard(path)
    assert got.dtype == np.dtype("<u4")
    np.testing.assert_array_equal(got, tokens)


@pytest.mark.parametrize("bad", [65536, -1])
def test_overflow_is_user_error(tmp_path, bad):
    path = tmp_path / "train_000000.bin"
    with pytest.raises(UserError, match="train_000000.bin.*does not fit"):
        write_shard(path, np.array([1, bad, 3]))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def _patch_header(path, index, value):
    with open(path, "r+b") as f:
        f.seek(4 * index)
        f.write(np.array([value], dtype="<i4").tobytes())


def test_bad_magic(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(10))
    _patch_header(path, 0, 12345)
    with pytest.raises(UserError, match=r"train_000000\.bin: not a token shard: magic number is 12345"):
        read_shard(path)


def test_bad_version(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(10))
    _patch_header(path, 1, 7)
    with pytest.raises(UserError, match=r"train_000000\.bin: unsupported shard version 7"):
        read_shard(path)


def test_truncated(tmp_path):
    path = tmp_path / "train_000001.bin"
    write_shard(path, np.arange(1000))
    os.truncate(path, HEADER_BYTES + 2 * 512)
    with pytest.raises(UserError,
                       match=r"train_000001\.bin: truncated shard: header says 1000 tokens but file holds 512"):
        read_shard(path)


def test_trailing_bytes_and_short_file(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(10))
    with open(path, "ab") as f:
        f.write(b"xx")
    with pytest.raises(UserError, match="train_000000.bin: corrupt shard"):
        read_shard(path)
    short = tmp_path / "val_000000.bin"
    short.write_bytes(b"abc")
    with pytest.raises(UserError, match="val_000000.bin: not a token shard"):
        read_shard(short)
    with pytest.raises(UserError, match="missing_train.bin: shard file not found"):
        read_shard(tmp_path / "missing_train.bin")


def test_empty_shard(tmp_path):
    path = tmp_path / "val_000000.bin"
    write_shard(path, np.array([], dtype=np.uint16))
    assert len(read_shard(path)) == 0


def test_npy_shard(tmp_path):
    arr = np.arange(0, 60000, 7, dtype=np.uint16)
    path = tmp_path / "edufineweb_val_000000.npy"
    np.save(path, arr)
    got = read_shard(path)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, arr)
    bad = tmp_path / "edufineweb_train_000000.npy"
    np.save(bad, np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(UserError, match="edufineweb_train_000000.npy: .npy shard must hold"):
        read_shard(bad)


def test_find_shards(tmp_path):
    names = [
        "train_000000.bin", "train_000001.bin", "val_000000.bin",
        "fineweb_train_000001.bin", "fineweb_val_000000.bin",
        "edufineweb_val_000000.npy", "edufineweb_train_000000.npy",
        "interval_000000.bin", "trainer_000000.bin", "train_000000.txt", ".tmp-train_000002.bin-x",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "manifest.json").write_text('{"shards": []}')  # not a shard itself
    assert [p.name for p in find_shards(tmp_path, "train")] == [
        "edufineweb_train_000000.npy", "fineweb_train_000001.bin", "train_000000.bin", "train_000001.bin",
    ]
    assert [p.name for p in find_shards(tmp_path, "val")] == [
        "edufineweb_val_000000.npy", "fineweb_val_000000.bin", "val_000000.bin",
    ]
    with pytest.raises(UserError, match="no 'test' shards in .*gpt2lab prepare"):
        find_shards(tmp_path, "test")
    with pytest.raises(UserError, match="nope does not exist"):
        find_shards(tmp_path / "nope", "train")
    # a text file given as the data folder (data.dir=corpus.jsonl) is not said not to exist (issue 29 item 9)
    (tmp_path / "corpus.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(UserError, match=r"corpus.jsonl is a file: the data must be a folder of shards; make one with "
                                        r"gpt2lab prepare .*corpus.jsonl --out DIR"):
        find_shards(tmp_path / "corpus.jsonl", "train")
