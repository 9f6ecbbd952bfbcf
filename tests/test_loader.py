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


def test_shard_advance_skip_and_epoch_wrap(tmp_path):
    raws = make_shards(tmp_path, [50, 5, 33])  # B*T = 8: 6 windows, skipped, 4 windows
    loader = TokenLoader(tmp_path, "train", batch_size=2, seq_len=4)
    assert loader.num_tokens == 88
    firsts = [loader.next_batch()[0][0, 0].item() for _ in range(10)]
    assert firsts == [0, 8, 16, 24, 32, 40, 55, 63, 71, 79]
    assert loader.state_dict() == {"shard": 0, "position": 0, "epoch": 1}
    x, _ = loader.next_batch()
    assert x[0, 0].item() == 0 and loader.epoch == 1


def test_state_dict_resume(tmp_path):
    make_shards(tmp_path, [101, 3, 77, 64])
    ref = TokenLoader(tmp_path, "train", batch_size=2, seq_len=5)
    for _ in range(7):
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))
    assert all(type(v) is int for v in state.values())
    fresh = TokenLoader(tmp_path, "train", batch_size=2, seq_len=5)
    fresh.load_state_dict(state)
    for _ in range(40):  # several epochs
        (x1, y1), (x2, y2) = ref.next_batch(), fresh.next_batch()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert ref.state_dict() == fresh.state_dict() and ref.epoch >= 2


def test_bad_state(tmp_path):
    make_shards(tmp_path, [100])
    loader = TokenLoader(tmp_path, "train", batch_size=2, seq_len=4)
    with pytest.raises(UserError, match="needs integer 'shard'"):
        loader.load_state_dict({"shard": 0})
    with pytest.raises(UserError, match="does not match the 1 'train' shards"):
        loader.load_state_dict({"shard": 3, "position": 0, "epoch": 0})


def test_two_ranks_cover_single_rank(tmp_path):
    # B*T = 8; shards hold an even number of windows so both layouts switch shards together
    make_shards(tmp_path, [49, 37])
    single = TokenLoader(tmp_path, "train", batch_size=2, seq_len=4)
    ranks = [TokenLoader(tmp_path, "train", batch_size=2, seq_len=4, rank=r, world_size=2) for r in (0, 1)]
    one_pass = [tuple(single.next_batch()[0].flatten().tolist()) for _ in range(10)]
    assert single.epoch == 1 and len(set(one_pass)) == 10
    got = [[tuple(ld.next_batch()[0].flatten().tolist()) for _ in range(5)] for ld in ranks]
    assert all(ld.epoch == 1 for ld in ranks)
    assert not set(got[0]) & set(got[1])
    assert set(got[0]) | set(got[1]) == set(one_pass)
    # interleaving rank 0, rank 1 step by step is exactly the single-process order
    assert [w for pair in zip(got[0], got[1]) for w in pair] == one_pass
    assert ranks[0].state_dict() == ranks[1].state_dict()


def test_too_small_split(tmp_path):
    make_shards(tmp_path, [30, 40], split="val")
    with pytest.raises(UserError, match=r"'val' .* too small for batch_size 4 x seq_len 16: .* 65 tokens .* holds 40"):
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
