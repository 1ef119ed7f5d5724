"""``--shard i/n``: which runs one of n texwatchd processes serves, with no coordination.

A store belongs to shard ``md5(key)[8:16] as a big-endian integer mod n`` (what Prometheus'
``hashmod`` relabelling computes), its key being the id fixed when it was made: a run's
``run_id``, a per-rank job's ``job_id`` (so every rank of a job lands on one daemon). A store
without an id (a per-rank job of an older texwatch, a folder that is not a store yet) is keyed
by its folder's name. The key never changes for the life of the store and md5 is the same in
every process and on every machine, so n daemons split a fleet into disjoint parts whose union
is every run, and each daemon can be restarted or moved on its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from texwatch._location import Where
from texwatch.store import store_id

__all__ = ["Shard", "parse_shard", "shard_of"]


def shard_of(key: str, count: int) -> int:
    """The shard of ``key`` among ``count``: Prometheus' ``hashmod`` (md5, its last 8 bytes)."""
    digest = hashlib.md5(key.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % count


def parse_shard(text: str) -> Shard:
    """``"i/n"`` as a :class:`Shard`, or a ValueError naming ``--shard``, the value and the form."""
    index, _, count = str(text).partition("/")
    try:
        return Shard(int(index), int(count))
    except ValueError:
        raise ValueError(_expected(text)) from None


def _expected(given: str) -> str:
    return (
        "Expected argument `--shard` as i/n with n >= 1 and 0 <= i < n (e.g. 0/2 and 1/2 for "
        f"two daemons) but got {given!r}"
    )


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: decides which stores this daemon serves.

    Example:
        >>> Shard(0, 1).owns(Path("runs/x.zarr"))
        True
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int)) or not (
            0 <= self.index < self.count
        ):
            raise ValueError(_expected(f"{self.index}/{self.count}"))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @staticmethod
    def key(path: Where) -> str:
        """What ``path`` is assigned by: its store's id, else the folder's name."""
        try:
            found = store_id(path)
        except (OSError, ValueError):  # unreadable: the daemon that owns its name reports it
            found = None
        return path.name if found is None else found

    def owns(self, path: Where) -> bool:
        """Whether the store at ``path`` (a run or a per-rank job) is this shard's."""
        return self.count == 1 or shard_of(self.key(path), self.count) == self.index
