"""Batches of token sequences from memory-mapped shards, for training: deterministic, resumable, rank-aware.

The split is seen as a list of *sequences*: shard k of L tokens holds ``(L - 1) // T``
sequences, sequence i being the window ``tokens[i*T : i*T + T + 1]`` (``x`` is its first T
tokens, ``y`` the last T, i.e. ``x`` shifted by one). An epoch takes the shards in order
and, within each shard, the sequences in order, like build-nanogpt's DataLoaderLite; with
``shuffle=True`` the shard order and the sequence order inside every shard are permuted,
differently each epoch, from ``seed``.

Each step all ``world_size`` ranks together take the next ``B * world_size`` sequences of the
epoch, rank r the r-th group of B. So the ranks read disjoint sequences that together are
exactly what one process with ``B * world_size`` would read, and within an epoch no token is
an input twice. When fewer than ``B * world_size`` sequences are left the epoch ends (at most
that many sequences, and the last ``(L - 1) % T`` tokens of each shard, are left out of it).

The loader's position is a count of sequences into the epoch, the same on every rank, so a
run can resume with another number of ranks or another micro-batch size.

With ``doc_start`` (``data.align_docs``: the EOT id, which gpt2lab's shards put before every
document) every sequence starts at a document instead: a sequence is the window of T + 1 tokens
from a ``doc_start`` token, the documents after it filling the row as they come, the last one cut
at the row's end; the next sequence starts at the first document start at or after that end (the
rest of a cut document is skipped, as modded-nanogpt and nanochat skip it). Those windows, fixed
per shard when the loader opens, are the shard's sequences: shuffling, the rank split and the
position work on them as on the fixed windows.

A sequence-length warm-up (``train.seq_len_warmup_steps``) cuts each row of a batch into shorter
sequences early in training (:func:`seq_len_at`, :func:`split_rows`): the same tokens, so the
loader and its position are the same whatever the step.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, brief
from .shards import find_shards, read_shard


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class TokenLoader:
    """Deterministic, resumable loader over the shards of one split.

    ``verify`` checks the shards against the directory's ``manifest.json`` (token counts and
    sha256) when it has one; pass False for trusted data to skip reading every byte once.
    """

    def __init__(
        self,
        data_dir,
        split: str,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = False,
        seed: int = 0,
        verify: bool = True,
        doc_start: int | None = None,
    ):
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
            if not _is_int(value) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(rank) or not 0 <= rank < world_size:
            raise UserError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.B, self.T = int(batch_size), int(seq_len)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.doc_start = None if doc_start is None else int(doc_start)
        self.shards = find_shards(self.data_dir, split)
        self.manifest = check_shards(self.data_dir, self.shards, verify)
        self._tokens = [read_shard(p) for p in self.shards]
        # where each sequence of a shard starts: i * T (None), or at documents (an array)
        self._starts_at = [None if self.doc_start is None else doc_windows(t, self.T, self.doc_start)
                           for t in self._tokens]
        self._counts = [max(0, (len(t) - 1) // self.T) if at is None else len(at)  # sequences per shard
                        for t, at in zip(self._tokens, self._starts_at)]
        self.sequences_per_epoch = sum(self._counts)
        per_step = self.B * self.world_size
        if self.sequences_per_epoch < per_step:
            ranks = f" x world_size {self.world_size}" if self.world_size > 1 else ""
            docs = f" starting at a document (token {self.doc_start})" if self.doc_start is not None else ""
            raise UserError(
                f"split {split!r} in {self.data_dir} is too small for batch_size {self.B}{ranks} at seq_len {self.T}: "
                f"one step needs {per_step} sequences of {self.T + 1} tokens{docs}, the split holds "
                f"{self.sequences_per_epoch} ({self.num_tokens} tokens); lower batch_size/seq_len or prepare more data"
            )
        self._epoch = 0
        self._next = 0  # sequences of this epoch already taken, by all ranks
        self._order_epoch = None  # epoch whose order is cached below

    @property
    def num_tokens(self) -> int:
        """Total tokens in the split."""
        return sum(len(t) for t in self._tokens)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.sequences_per_epoch // (self.B * self.world_size)

    # -- the order of an epoch ------------------------------------------------------------
    def _order(self) -> None:
        """Shard order, cumulative sequence counts and (when shuffling) per-shard permutations of this epoch."""
        if self._order_epoch == self._epoch:
            return
        order = list(range(len(self._tokens)))
        if self.shuffle:
            order = [int(i) for i in np.random.default_rng([self.seed, self._epoch]).permutation(len(order))]
        self._shard_order = order
        self._starts = np.cumsum([0] + [self._counts[k] for k in order]).tolist()
        self._perms: dict[int, np.ndarray] = {}
        self._order_epoch = self._epoch

    def _perm(self, shard: int) -> np.ndarray:
        if shard not in self._perms:
            rng = np.random.default_rng([self.seed, self._epoch, shard])
            self._perms[shard] = rng.permutation(self._counts[shard])
        return self._perms[shard]

    def _windows(self, first: int, count: int) -> np.ndarray:
        """Sequences ``first .. first+count-1`` of the epoch as a ``(count, T+1)`` int64 array."""
        self._order()
        out = np.empty((count, self.T + 1), dtype=np.int64)
        row = 0
        while row < count:
            j = first + row
            pos = bisect.bisect_right(self._starts, j) - 1
            shard = self._shard_order[pos]
            i = j - self._starts[pos]
            n = min(count - row, self._starts[pos + 1] - j)  # how many of them lie in this shard
            tokens = self._tokens[shard]
            if self._starts_at[shard] is not None:  # document-aligned windows: gathered by their starts
                rows = self._perm(shard)[i : i + n] if self.shuffle else np.arange(i, i + n)
                out[row : row + n] = tokens[self._starts_at[shard][rows][:, None] + np.arange(self.T + 1)]
            elif self.shuffle:
                for r, s in enumerate(self._perm(shard)[i : i + n]):
                    out[row + r] = tokens[s * self.T : s * self.T + self.T + 1]
            else:  # consecutive sequences: one contiguous read of n*T + 1 tokens
                flat = np.asarray(tokens[i * self.T : (i + n) * self.T + 1], dtype=np.int64)
                out[row : row + n, :-1] = flat[:-1].reshape(n, self.T)
                out[row : row + n, -1] = flat[self.T :: self.T]
            row += n
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)`` pair: int64 ``(B, T)`` CPU tensors, ``y[b, t] == x[b, t+1]`` in the stream."""
        span = self.B * self.world_size
        if self._next + span > self.sequences_per_epoch:
            self._epoch, self._next = self._epoch + 1, 0
        windows = torch.from_numpy(self._windows(self._next + self.rank * self.B, self.B))
        self._next += span
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    # -- resuming -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the next batch comes from, as plain values, the same on every rank.

        ``sequence`` counts sequences into the epoch, so a run can resume with a different
        number of ranks or micro-batch size; ``seq_len``, ``shuffle``, ``seed`` and ``align_docs``
        (present when True) must match.
        """
        state = {"epoch": self._epoch, "sequence": self._next, "seq_len": self.T,
                 "shuffle": self.shuffle, "seed": self.seed}
        if self.doc_start is not None:  # the fixed windows' state stays what it was
            state["align_docs"] = True
        return state

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, sequence, seq_len = (int(state[k]) for k in ("epoch", "sequence", "seq_len"))
            shuffle, seed = bool(state["shuffle"]), int(state["seed"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"bad data loader state {brief(state, 200)}: needs 'epoch', 'sequence', 'seq_len', 'shuffle' and "
                "'seed'; the checkpoint may be damaged or from an older gpt2lab"
            ) from None
        if seq_len != self.T:
            raise UserError(f"the checkpoint's data position is in sequences of {seq_len} tokens, this run uses "
                            f"{self.T}; resume with train.seq_len={seq_len}")
        if (shuffle, seed) != (self.shuffle, self.seed):
            raise UserError(f"the checkpoint was written with data.shuffle={shuffle} and seed {seed}, this run has "
                            f"{self.shuffle} and {self.seed}; resume with the same settings")
        aligned = bool(state.get("align_docs", False))
        if aligned != (self.doc_start is not None):
            raise UserError(f"the checkpoint's data position is in sequences {'at' if aligned else 'not at'} document "
                            f"starts; resume with data.align_docs={str(aligned).lower()}")
        if epoch < 0 or not 0 <= sequence <= self.sequences_per_epoch:
            raise UserError(
                f"data loader state {brief(state, 200)} does not match the {self.sequences_per_epoch} sequences of the "
                f"{self.split!r} shards in {self.data_dir}; was the data re-prepared?"
            )
        self._epoch, self._next = epoch, sequence

    def __repr__(self) -> str:
        return (
            f"TokenLoader({str(self.data_dir)!r}, {self.split!r}, B={self.B}, T={self.T}, "
            f"rank={self.rank}/{self.world_size}, shards={len(self.shards)}, tokens={self.num_tokens}, "
            f"shuffle={self.shuffle})"
        )


def doc_windows(tokens: np.ndarray, seq_len: int, doc_start: int) -> np.ndarray:
    """The start of every document-aligned sequence of a shard (int64): the first ``doc_start`` token with
    ``seq_len`` tokens after it, then each time the first one at or after the previous start + ``seq_len``
    (so x tokens never repeat); a document start too close to the shard's end for a whole window is left out."""
    starts = np.flatnonzero(np.asarray(tokens) == doc_start)
    starts = starts[starts + seq_len + 1 <= len(tokens)]
    after = np.searchsorted(starts, starts + seq_len).tolist()  # the first start at or after each window's end
    chosen, k = [], 0
    while k < len(starts):
        chosen.append(k)
        k = after[k]
    return starts[chosen].astype(np.int64)


def seq_len_at(step: int, seq_len: int, warmup_steps: int, shortest: int) -> int:
    """The sequence length of optimizer step ``step`` (0-based) under a sequence-length warm-up: seq_len halved
    k times while it divides evenly and stays >= ``shortest``, the shortest first, each for an equal share of
    the first ``warmup_steps`` steps; seq_len from then on (and when it has no such half)."""
    lengths, n = [], seq_len
    while n % 2 == 0 and n // 2 >= shortest:
        n //= 2
        lengths.insert(0, n)  # the shortest first
    if step >= warmup_steps or not lengths:
        return seq_len
    return lengths[step * len(lengths) // warmup_steps]


def split_rows(x: torch.Tensor, y: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's (B, T) rows cut into (B * T / length, length) sequences: the same tokens and targets (a
    piece's last target is the next piece's first input), each piece attending from position 0."""
    return x.reshape(-1, length), y.reshape(-1, length)


def check_shards(data_dir, shards: list[Path], hashes: bool = True) -> dict | None:
    """Check ``shards`` against data_dir's manifest (token counts; sha256 too with ``hashes``), if it
    has one (build-nanogpt folders do not); return the manifest."""
    from .prepare import load_manifest, verify

    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    if manifest is not None:
        verify(data_dir, [p.name for p in shards], hashes=hashes)
    return manifest
