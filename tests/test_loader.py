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
    ranks = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=world, shuffle=shuffle, seed=3)
             for r in range(world)]
    seen = _epoch_inputs(ranks)
    flat = [t for s in seen for t in s]
    assert len(flat) == len(set(flat)) == 40 * T  # no token twice across ranks
    expected = set().union(*({int(t) for t in raw[:-1]} for raw in raws))  # every token but each shard's last
    assert set(flat) == expected
    # and it is exactly what one process with the whole batch reads, in the same order
    single = TokenLoader(tmp_path, "train", B * world, T, shuffle=shuffle, seed=3)
    one = single.next_batch()[0]
    first_steps = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=world, shuffle=shuffle, seed=3)
                   for r in range(world)]
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
    with pytest.raises(UserError,
                       match=r"'val' .* too small for batch_size 4 at seq_len 16: .* needs 4 sequences .* holds 3"):
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


# --- document-aligned rows (data.align_docs) ------------------------------------------------------

START = 0  # the document-start token of these shards (gpt2lab's: EOT before every document)


def make_doc_shards(d, docs_per_shard, seed=0, lead=3):
    """Shards of documents of random lengths (1..3T for T = 8): each ``[START, ids...]`` with ids unique over
    all shards; every shard but the first begins with ``lead`` tokens of a document the one before began."""
    rng = np.random.default_rng(seed)
    out, next_id = [], 1
    for i, n_docs in enumerate(docs_per_shard):
        toks = list(range(next_id, next_id + lead)) if i else []
        next_id += len(toks)
        for length in rng.integers(1, 25, size=n_docs):
            toks += [START] + list(range(next_id, next_id + int(length) - 1))
            next_id += int(length) - 1
        write_shard(d / f"train_{i:06d}.bin", np.array(toks))
        out.append(np.array(toks))
    return out


def test_doc_windows_start_at_documents_and_never_repeat_an_input():
    from gpt2lab.data.loader import doc_windows

    t = np.array([7, 0, 1, 2, 0, 5, 6, 7, 8, 9, 0, 1, 0, 3, 4, 0, 7])
    # T = 4: from 1 (docs at 1 and 4 packed, cut at 5); next at >= 5: 10 (docs at 10 and 12); 15 has no room
    assert doc_windows(t, 4, 0).tolist() == [1, 10]
    # T = 3: 1, 4 (at 1 + 3), 10; 12 lies inside the window from 10, and 15 has no 3 tokens after it
    assert doc_windows(t, 3, 0).tolist() == [1, 4, 10]
    assert doc_windows(t, 20, 0).tolist() == [] and doc_windows(t[1:4], 2, 0).tolist() == [0]


def _aligned(tmp_path, B, rank=0, world=1, shuffle=False, seed=3, T=8):
    return TokenLoader(tmp_path, "train", B, T, rank=rank, world_size=world, shuffle=shuffle, seed=seed,
                       doc_start=START)


@pytest.mark.parametrize("shuffle", [False, True])
def test_aligned_rows_are_windows_from_document_starts(tmp_path, shuffle):
    from gpt2lab.data.loader import doc_windows

    raws = make_doc_shards(tmp_path, [40, 3, 25])
    ld = _aligned(tmp_path, 3, shuffle=shuffle)
    starts = [doc_windows(r, 8, START) for r in raws]
    assert ld.sequences_per_epoch == sum(len(s) for s in starts) > 20
    windows = {tuple(r[s : s + 9]) for r, ss in zip(raws, starts) for s in ss}
    seen = []
    for _ in range(ld.steps_per_epoch):
        x, y = ld.next_batch()
        assert (x[:, 0] == START).all() and torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            assert tuple(row_x + row_y[-1:]) in windows  # a window of the stream, from a document start
            seen += [t for t in row_x if t != START]
    assert ld.epoch == 0 and len(seen) == len(set(seen))  # no input token twice in an epoch
    # documents longer than a row are cut (the rest skipped); shorter ones share a row
    assert any(row.count(START) > 1 for row in (list(w) for w in windows))
    assert ld.state_dict()["align_docs"] is True
    assert "align_docs" not in TokenLoader(tmp_path, "train", 3, 8).state_dict()  # the fixed windows' state as it was


def test_aligned_state_dict_resume(tmp_path):
    make_doc_shards(tmp_path, [30, 2, 20, 15])
    for shuffle in (False, True):
        ref = _aligned(tmp_path, 2, shuffle=shuffle, seed=7)
        for _ in range(7):
            ref.next_batch()
        fresh = _aligned(tmp_path, 2, shuffle=shuffle, seed=7)
        fresh.load_state_dict(json.loads(json.dumps(ref.state_dict())))
        for _ in range(60):  # several epochs
            (x1, y1), (x2, y2) = ref.next_batch(), fresh.next_batch()
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert ref.state_dict() == fresh.state_dict() and ref.epoch >= 2


def test_aligned_and_fixed_positions_do_not_mix(tmp_path):
    make_doc_shards(tmp_path, [30])
    aligned, fixed = _aligned(tmp_path, 2), TokenLoader(tmp_path, "train", 2, 8, seed=3)
    with pytest.raises(UserError, match="resume with data.align_docs=true"):
        fixed.load_state_dict(aligned.state_dict())
    with pytest.raises(UserError, match="resume with data.align_docs=false"):
        aligned.load_state_dict(fixed.state_dict())
    with pytest.raises(UserError, match=r"needs 40 sequences of 9 tokens starting at a document \(token 0\)"):
        _aligned(tmp_path, 40)


@pytest.mark.parametrize("shuffle", [False, True])
def test_aligned_ranks_read_disjoint_rows_that_make_one_processs_batch(tmp_path, shuffle):
    make_doc_shards(tmp_path, [50, 30, 45])
    world, B = 3, 2
    ranks = [_aligned(tmp_path, B, r, world, shuffle) for r in range(world)]
    single = _aligned(tmp_path, B * world, shuffle=shuffle)
    assert ranks[0].steps_per_epoch == single.steps_per_epoch
    inputs = []
    for _ in range(single.steps_per_epoch):
        parts = [ld.next_batch()[0] for ld in ranks]
        assert torch.equal(torch.cat(parts), single.next_batch()[0])
        inputs += [t for p in parts for t in p.flatten().tolist() if t != START]
    assert len(inputs) == len(set(inputs))  # disjoint across ranks and steps
    # two ranks' checkpoint resumes on one process with twice the micro-batch, and on three processes
    two = [_aligned(tmp_path, 2, r, 2, shuffle) for r in (0, 1)]
    for _ in range(5):
        for ld in two:
            ld.next_batch()
    state = two[1].state_dict()
    ref = _aligned(tmp_path, 4, shuffle=shuffle)
    for _ in range(5):
        ref.next_batch()
    one, three_as_one = _aligned(tmp_path, 4, shuffle=shuffle), _aligned(tmp_path, 3, shuffle=shuffle)
    three = [_aligned(tmp_path, 1, r, 3, shuffle) for r in range(3)]
    for ld in (one, three_as_one, *three):
        ld.load_state_dict(state)
    for _ in range(60):  # across epoch ends (24 steps of 4 an epoch)
        assert torch.equal(one.next_batch()[0], ref.next_batch()[0])
        assert torch.equal(torch.cat([ld.next_batch()[0] for ld in three]), three_as_one.next_batch()[0])
    assert one.state_dict() == ref.state_dict() and ref.epoch >= 2


def test_seq_len_warmup_halves_and_splits_rows_into_the_same_tokens():
    from gpt2lab.data.loader import seq_len_at, split_rows

    assert [seq_len_at(s, 256, 30, 64) for s in (0, 14, 15, 29, 30, 1000)] == [64, 64, 128, 128, 256, 256]
    assert [seq_len_at(s, 1024, 9, 100) for s in range(10)] == [128] * 3 + [256] * 3 + [512] * 3 + [1024]
    assert seq_len_at(0, 256, 0, 64) == 256 and seq_len_at(0, 255, 10, 64) == 255  # off; no even half
    assert seq_len_at(0, 256, 10, 200) == 256  # no half >= 200
    x = torch.arange(2 * 16).view(2, 16)
    y = x + 1
    xs, ys = split_rows(x, y, 4)
    assert xs.shape == ys.shape == (8, 4) and torch.equal(xs.flatten(), x.flatten()) and torch.equal(ys, xs + 1)
    assert split_rows(x, y, 16)[0] is not None and torch.equal(split_rows(x, y, 16)[0], x)
