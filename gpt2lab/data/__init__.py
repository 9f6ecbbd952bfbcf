"""Token data: the shard format, corpus preparation and the training loader.

``TokenLoader`` is imported lazily so that ``prepare`` (and its worker processes) do not
pay for importing torch.
"""

from .prepare import MANIFEST, load_manifest, prepare, verify
from .shards import MAGIC, VERSION, find_shards, read_shard, write_shard
from .sources import HubSource

__all__ = [
    "MAGIC", "VERSION", "MANIFEST", "HubSource", "TokenLoader", "find_shards", "load_manifest", "prepare", "read_shard",
    "verify", "write_shard",
]


def __getattr__(name):
    if name == "TokenLoader":
        from .loader import TokenLoader

        return TokenLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
