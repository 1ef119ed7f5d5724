"""A zarr ``Store`` over one prefix of an object store, every request through its ``Bucket``.

zarr's own ``ObjectStore`` takes an obstore store per prefix (one HTTP client each) and sends
requests unpaced and unretried by texwatch; this store shares its bucket's client, rate cap and
retry counts. A writer's store carries its ``Lease``: every write first checks the lease is
held, and the run's commit marker (the root ``zarr.json``) is written only if it is still the
object this writer last wrote (``If-Match``), so a writer that lost its lease can never publish.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

from texwatch._location import ObjectPath

if TYPE_CHECKING:
    from texwatch._lease import Lease

__all__ = ["ObjectZarrStore"]

MARKER = "zarr.json"
"""The root group's metadata: the run's commit marker."""


class ObjectZarrStore(Store):
    """The zarr store of the run (or group) at ``root``; ``lease`` fences a writer's writes."""

    def __init__(self, root: ObjectPath, *, read_only: bool, lease: Lease | None = None) -> None:
        super().__init__(read_only=read_only)
        self._root = root
        self._bucket = root.bucket
        self._lease = lease

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ObjectZarrStore)
            and other._root == self._root
            and other.read_only == self.read_only
        )

    def __str__(self) -> str:
        return str(self._root)

    def __repr__(self) -> str:
        return f"ObjectZarrStore({str(self._root)!r})"

    def with_read_only(self, read_only: bool = False) -> ObjectZarrStore:
        return ObjectZarrStore(self._root, read_only=read_only, lease=self._lease)

    def _key(self, key: str) -> str:
        return f"{self._root.key}/{key}" if self._root.key else key

    # reads

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        import obstore

        store, path = self._bucket.store, self._key(key)

        async def read() -> bytes:
            if byte_range is None:
                reply = await obstore.get_async(store, path)
                return bytes(await reply.bytes_async())
            if isinstance(byte_range, RangeByteRequest):
                return bytes(
                    await obstore.get_range_async(
                        store, path, start=byte_range.start, end=byte_range.end
                    )
                )
            if isinstance(byte_range, OffsetByteRequest):
                options: Any = {"range": {"offset": byte_range.offset}}
            else:
                options = {"range": {"suffix": byte_range.suffix}}
            reply = await obstore.get_async(store, path, options=options)
            return bytes(await reply.bytes_async())

        try:
            data = await self._bucket.acall(read)
        except FileNotFoundError:
            return None
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        import obstore

        try:
            await self._bucket.acall(lambda: obstore.head_async(self._bucket.store, self._key(key)))
        except FileNotFoundError:
            return False
        return True

    # writes

    @property
    def supports_writes(self) -> bool:
        return True

    async def set(self, key: str, value: Buffer) -> None:
        import obstore

        self._check_writable()
        data = value.as_buffer_like()
        lease = self._lease
        if lease is None:
            await self._bucket.acall(
                lambda: obstore.put_async(self._bucket.store, self._key(key), data)
            )
            return
        mode: Any = None
        if key == MARKER:
            mode = "create" if lease.marker_etag is None else {"e_tag": lease.marker_etag}

        async def put() -> Any:
            lease.check()  # before every try: a retry must start within the lease too
            return await obstore.put_async(self._bucket.store, self._key(key), data, mode=mode)

        try:
            reply = await self._bucket.acall(put)
        except (obstore.exceptions.PreconditionError, obstore.exceptions.AlreadyExistsError):
            lease.lost(f"its commit marker {self._root / MARKER} was written by another writer")
        if key == MARKER:
            lease.marker_etag = reply["e_tag"]

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        import obstore

        self._check_writable()
        if self._lease is not None:
            self._lease.check()
        data = value.as_buffer_like()
        with contextlib.suppress(obstore.exceptions.AlreadyExistsError):
            await self._bucket.acall(
                lambda: obstore.put_async(self._bucket.store, self._key(key), data, mode="create"),
            )

    @property
    def supports_deletes(self) -> bool:
        return True

    async def delete(self, key: str) -> None:
        import obstore

        self._check_writable()
        if self._lease is not None:
            self._lease.check()
        with contextlib.suppress(FileNotFoundError):
            await self._bucket.acall(
                lambda: obstore.delete_async(self._bucket.store, self._key(key))
            )

    # listing

    @property
    def supports_listing(self) -> bool:
        return True

    async def list(self) -> AsyncIterator[str]:
        async for key in self.list_prefix(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        import obstore

        base = f"{self._root.key}/" if self._root.key else ""

        async def listing() -> list[str]:
            # every page is fetched inside the call: under the cap, and retried whole
            pages = obstore.list(self._bucket.store, base + prefix or None)
            return [meta["path"] async for page in pages for meta in page]

        for key in await self._bucket.acall(listing):
            yield key[len(base) :]

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        import obstore

        base = f"{self._root.key}/" if self._root.key else ""
        where = base + prefix.rstrip("/")
        where = f"{where}/" if where else ""
        listed = await self._bucket.acall(
            lambda: obstore.list_with_delimiter_async(self._bucket.store, where or None)
        )
        for meta in listed["objects"]:
            yield meta["path"][len(where) :]
        for common in listed["common_prefixes"]:
            yield common.rstrip("/")[len(where) :]
