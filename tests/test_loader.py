import json

import numpy as np
import pytest
import torch

from gpt2lab.data import TokenLoader
from gpt2lab.data.shards import write_shard
from gpt2lab.errors import UserError


def make_shards(d, sizes, split="train"):
    """Shards of consecutive token ids (each id unique across shards), one per size."""
    out, start = [], 0
    for i, n in enumerate(sizes):
        toks = np.arange(start, start + n)
        write_shard(d / f"{split}_{i:06d}.bin", toks)
        out.append(toks)
        start += n
    return out


def test_x_y_shift_against_raw_shard(tmp_path):
    (raw,) = make_shards(tmp_path, [1000])
    loader = TokenLoader(tmp_path, "train", batch_size=3, seq_len=16)
    assert loader.num_tokens == 1000
    for step in range(5):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.int64
        window = raw[step * 48 : step * 48 + 49]
        assert torch.equal(x.flatten(), torch.from_numpy(window[:-1]))
        assert torch.equal(y.flatten(), torch.from_numpy(window[1:]))
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_crosses_shards_and_wraps_epochs(tmp_path):
    make_shards(tmp_path, [50, 5, 33])  # T = 4: 12 + 1 + 8 = 21 sequences, 10 steps of B = 2
    loader = TokenLoader(tmp_path, "train", batch_size=2, seq_len=4)
    assert loader.num_tokens == 88 and loader.sequences_per_epoch == 21 and loader.steps_per_epoch == 10
    firsts = [loader.next_batch()[0][:, 0].tolist() for _ in range(10)]
    # shard 0 holds sequences at 0, 4, ..., 44; shard 1 (ids 50..54) one at 50; shard 2 (55..87) at 55 ... 83
    starts = [4 * i for i in range(12)] + [50] + [55 + 4 * i for i in range(8)]
    assert firsts == [starts[2 * k : 2 * k + 2] for k in range(10)]  # the 21st sequence is left out
    assert loader.epoch == 0
    x, y = loader.next_batch()
    assert loader.epoch == 1 and x[:, 0].tolist() == [0, 4]
    assert loader.state_dict()["sequence"] == 2 and loader.state_dict()["epoch"] == 1


def test_state_dict_resume(tmp_path):
    make_shards(tmp_path, [101, 3, 77, 64])
    for shuffle in (False, True):
        ref = TokenLoader(tmp_path, "train", batch_size=2, seq_len=5, shuffle=shuffle, seed=7)
        for _ in range(7):
            ref.next_batch()
        state = json.loads(json.dumps(ref.state_dict()))
        fresh = TokenLoader(tmp_path, "train", batch_size=2, seq_len=5, shuffle=shuffle, seed=7)
        fresh.load_state_dict(state)
        for _ in range(40):  # several epochs
            (x1, y1), (x2, y2) = ref.next_batch(), fresh.next_batch()
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert ref.state_dict() == fresh.state_dict() and ref.epoch >= 2


def test_bad_state(tmp_path):
    make_shards(tmp_path, [100])
    loader = TokenLoader(tmp_path, "train", batch_size=2, seq_len=4)
    with pytest.raises(UserError, match="needs 'epoch', 'sequence'"):
        loader.load_state_dict({"shard": 0, "position": 0, "epoch": 0})
    good = loader.state_dict()
    with pytest.raises(UserError, match="does not match the 24 sequences"):
        loader.load_state_dict({**good, "sequence": 25})
    with pytest.raises(UserError, match="train.seq_len=8"):
        loader.load_state_dict({**good, "seq_len": 8})
    with pytest.raises(UserError, match="data.shuffle=True"):
        loader.load_state_dict({**good, "shuffle": True})


def _epoch_inputs(loaders):
    """All x tokens each loader gives in one epoch (steps until the epoch counter moves)."""
    seen = []
    for ld in loaders:
        got = []
        for _ in range(ld.steps_per_epoch):
            got.extend(ld.next_batch()[0].flatten().tolist())
        assert ld.epoch == 0
        seen.append(got)
    return seen


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_cover_every_token_once_per_epoch(tmp_path, shuffle):
    T = 8
    raws = make_shards(tmp_path, [8 * 13 + 1, 8 * 5 + 1, 8 * 22 + 1])  # 40 sequences, no tails
    world, B = 4, 2  # 5 steps of 8 sequences: all 40
    ranks = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=world, shuffle=shuffle, seed=3) for r in range(world)]
    seen = _epoch_inputs(ranks)
    flat = [t for s in seen for t in s]
    assert len(flat) == len(set(flat)) == 40 * T  # no token twice across ranks
    expected = set().union(*({int(t) for t in raw[:-1]} for raw in raws))  # every token but each shard's last
    assert set(flat) == expected
    # and it is exactly what one process with the whole batch reads, in the same order
    single = TokenLoader(tmp_path, "train", B * world, T, shuffle=shuffle, seed=3)
    one = single.next_batch()[0]
    first_steps = [ld for ld in (TokenLoader(tmp_path, "train", B, T, rank=r, world_size=world, shuffle=shuffle, seed=3)
                                 for r in range(world))]
    assert torch.equal(torch.cat([ld.next_batch()[0] for ld in first_steps]), one)


def test_shuffle_is_seeded_and_differs_per_epoch(tmp_path):
    make_shards(tmp_path, [8 * 10 + 1, 8 * 6 + 1, 8 * 9 + 1])
    def epoch_orders(seed, epochs=2):
        ld = TokenLoader(tmp_path, "train", 5, 8, shuffle=True, seed=seed)
        out = []
        for _ in range(epochs):
            out.append([tuple(ld.next_batch()[0][:, 0].tolist()) for _ in range(ld.steps_per_epoch)])
        return out
    a, b, c = epoch_orders(1), epoch_orders(1), epoch_orders(2)
    plain = TokenLoader(tmp_path, "train", 5, 8)
    plain_order = [tuple(plain.next_batch()[0][:, 0].tolist()) for _ in range(plain.steps_per_epoch)]
    assert a == b  # deterministic for a seed
    assert a != c and a[0] != a[1] and a[0] != plain_order  # another seed, another epoch: another order
    assert sorted(t for s in a[0] for t in s) == sorted(t for s in plain_order for t in s)  # same sequences


def test_resume_with_another_world_size(tmp_path):
    make_shards(tmp_path, [8 * 30 + 1, 8 * 20 + 1])
    for shuffle in (False, True):
        # two ranks take 3 steps, then one process with twice the micro-batch continues
        ranks = [TokenLoader(tmp_path, "train", 2, 8, rank=r, world_size=2, shuffle=shuffle) for r in (0, 1)]
        for _ in range(3):
            for ld in ranks:
                ld.next_batch()
        one = TokenLoader(tmp_path, "train", 4, 8, shuffle=shuffle)
        one.load_state_dict(ranks[0].state_dict())
        ref = TokenLoader(tmp_path, "train", 4, 8, shuffle=shuffle)
        for _ in range(3):
            ref.next_batch()
        for _ in range(30):  # across epoch ends
            assert torch.equal(one.next_batch()[0], ref.next_batch()[0])


def test_too_small_split(tmp_path):
    make_shards(tmp_path, [30, 40], split="val")
    with pytest.raises(UserError, match=r"'val' .* too small for batch_size 4 at seq_len 16: .* needs 4 sequences .* holds 3"):
        TokenLoader(tmp_path, "val", batch_size=4, seq_len=16)
    with pytest.raises(UserError, match="world_size 2"):
        TokenLoader(tmp_path, "val", batch_size=1, seq_len=32, rank=1, world_size=2)
    TokenLoader(tmp_path, "val", batch_size=1, seq_len=32)  # 33 tokens fit in the 40-token shard
    with pytest.raises(UserError, match="rank must be in 0..1"):
        TokenLoader(tmp_path, "val", batch_size=1, seq_len=4, rank=2, world_size=2)
    with pytest.raises(UserError, match="no 'train' shards"):
        TokenLoader(tmp_path, "train", batch_size=1, seq_len=4)


def test_reads_npy_shards(tmp_path):
    arr = np.arange(300, dtype=np.uint16)
    np.save(tmp_path / "edufineweb_val_000000.npy", arr)
    loader = TokenLoader(tmp_path, "val", batch_size=2, seq_len=10)
    x, y = loader.next_batch()
    assert x.flatten().tolist() == list(range(20)) and y.flatten().tolist() == list(range(1, 21))


def test_manifest_catches_damaged_shards(small_shards, tmp_path):
    import shutil

    d = tmp_path / "data"
    shutil.copytree(small_shards, d)
    TokenLoader(d, "train", 2, 32)  # intact
    shard = d / "train_000000.bin"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0x01  # one bit of one token
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train_000000.bin: sha256 differs from .*manifest.json.*data.verify=false"):
        TokenLoader(d, "train", 2, 32)
    TokenLoader(d, "train", 2, 32, verify=False)  # trusted data: the hash is skipped
    shard.write_bytes(bytes(data[:-100]))  # truncated (the header still says the old count)
    with pytest.raises(UserError, match=r"train_000000.bin: truncated shard"):
        TokenLoader(d, "train", 2, 32, verify=False)
    write_shard(shard, np.asarray(np.frombuffer(bytes(data[1024:-100]), dtype=np.uint16)))  # consistent but shorter
    with pytest.raises(UserError, match=r"train_000000.bin: token count differs from .*manifest.json"):
        TokenLoader(d, "train", 2, 32, verify=False)
    shutil.copy(small_shards / "train_000000.bin", shard)
    write_shard(d / "train_000001.bin", np.arange(100))  # a shard the manifest does not know
    with pytest.raises(UserError, match=r"train_000001.bin: not listed in .*manifest.json"):
        TokenLoader(d, "train", 2, 32, verify=False)
