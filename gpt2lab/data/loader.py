"""Batches of token windows from memory-mapped shards, for training and validation.

Like build-nanogpt's DataLoaderLite: each step reads a window of ``B*T + 1`` consecutive
tokens and returns ``x`` (the first ``B*T``) and ``y`` (the last ``B*T``, i.e. ``x`` shifted
by one) as ``(B, T)`` int64 tensors. With ``world_size`` processes, rank ``r`` reads the
window at ``base + r*B*T`` and every rank moves ``base`` on by ``B*T*world_size``, so the ranks
read disjoint windows that together cover what one process would read. When the next group
of windows would run past the end of a shard, all ranks move to the next shard together;
after the last shard they wrap to the first one and ``epoch`` goes up. Shards too small for
one group of windows are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .shards import find_shards, read_shard


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class TokenLoader:
    """Deterministic, resumable loader over the shards of one split."""

    def __init__(self, data_dir, split: str, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
            if not _is_int(value) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(rank) or not 0 <= rank < world_size:
            raise UserError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.B, self.T = int(batch_size), int(seq_len)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shards = find_shards(self.data_dir, split)
        self._tokens = [read_shard(p) for p in self.shards]
        self._span = self.B * self.T * self.world_size  # how far all ranks move per step
        self._usable = [i for i, t in enumerate(self._tokens) if len(t) >= self._span + 1]
        if not self._usable:
            largest = max(len(t) for t in self._tokens)
            ranks = f" x world_size {self.world_size}" if self.world_size > 1 else ""
            raise UserError(
                f"split {split!r} in {self.data_dir} is too small for batch_size {self.B} x "
                f"seq_len {self.T}{ranks}: one step needs {self._span + 1} tokens in one shard, "
                f"the largest shard holds {largest}; lower batch_size/seq_len or prepare more data"
            )
        self.reset()

    @property
    def num_tokens(self) -> int:
        """Total tokens in the split (all shards, including ones too small to be used)."""
        return sum(len(t) for t in self._tokens)

    def reset(self) -> None:
        """Go back to the first window of the first usable shard, epoch 0."""
        self._shard = self._usable[0]
        self._base = 0
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def _fits(self) -> bool:
        return self._base + self._span + 1 <= len(self._tokens[self._shard])

    def _next_shard(self) -> None:
        later = [i for i in self._usable if i > self._shard]
        if later:
            self._shard = later[0]
        else:
            self._shard = self._usable[0]
            self._epoch += 1
        self._base = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)`` pair: int64 ``(B, T)`` CPU tensors, ``y[b, t] == x[b, t+1]`` in the stream."""
        n = self.B * self.T
        start = self._base + self.rank * n
        window = np.array(self._tokens[self._shard][start : start + n + 1], dtype=np.int64)
        buf = torch.from_numpy(window)
        x = buf[:-1].view(self.B, self.T)
        y = buf[1:].view(self.B, self.T)
        self._base += self._span
        if not self._fits():
            self._next_shard()
        return x, y

    def state_dict(self) -> dict:
        """Where the next batch comes from, as plain ints.

        ``position`` is the offset of rank 0's next window in the shard, so every rank
        saves the same state and a run can resume with a different number of ranks.
        """
        return {"shard": int(self._shard), "position": int(self._base), "epoch": int(self._epoch)}

    def load_state_dict(self, state: dict) -> None:
        try:
            shard, position, epoch = (int(state[k]) for k in ("shard", "position", "epoch"))
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"bad data loader state {state!r}: needs integer 'shard', 'position' and "
                "'epoch'; the checkpoint may be damaged"
            ) from None
        if not 0 <= shard < len(self._tokens) or position < 0 or epoch < 0:
            raise UserError(
                f"data loader state {state!r} does not match the {len(self._tokens)} "
                f"{self.split!r} shards in {self.data_dir}; was the data re-prepared?"
            )
        self._shard, self._base, self._epoch = shard, position, epoch
        if shard not in self._usable or not self._fits():
            self._next_shard()

    def __repr__(self) -> str:
        return (
            f"TokenLoader({str(self.data_dir)!r}, {self.split!r}, B={self.B}, T={self.T}, "
            f"rank={self.rank}/{self.world_size}, shards={len(self.shards)}, tokens={self.num_tokens})"
        )
