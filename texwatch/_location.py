"""Where a run store lives: a local folder, or a prefix in an object store.

``locate`` turns what a user passes (a path, a ``file://`` URL, or an ``s3://``, ``gs://``,
``az://`` or ``memory://`` URL) into a ``pathlib.Path`` or an ``ObjectPath``; any other scheme
is a ValueError, never a local folder named after the URL. ``ObjectPath`` has the few
``pathlib`` methods the store code uses (``/``, ``name``, ``parent``, ``exists``,
``read_bytes``, ``iterdir``...), so one code path reads both.

Object stores are reached through obstore (the Rust ``object_store`` crate): through zarr, its
PUTs took a third of s3fs's CPU time, and a third of its latency one at a time, in
``benchmarks/object_store.py`` (see docs/object-storage.md), and it offers the conditional
writes the writer lease needs (S3 ``If-None-Match``/``If-Match``, GCS generations, Azure ETags)
for every backend alike. Credentials come from ``storage_options`` or the standard environment
variables (``AWS_*`` including ``AWS_ENDPOINT_URL``, ``GOOGLE_*``, ``AZURE_*``).

Every request goes through a ``Bucket``: at most ``max_requests_per_second`` per bucket and
process, and transient failures (throttling, 5xx, timeouts, dropped connections) retried with
exponential backoff and full jitter, each retry counted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

__all__ = [
    "MAX_REQUESTS_PER_SECOND",
    "REMOTE_SCHEMES",
    "Bucket",
    "ObjectPath",
    "RequestCounts",
    "Where",
    "buckets",
    "is_plain_file",
    "locate",
]

REMOTE_SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "az",
    "azure": "az",
    "abfs": "az",
    "abfss": "az",
    "memory": "memory",
}
"""URL schemes served by an object store, and the obstore scheme each means."""

MAX_REQUESTS_PER_SECOND = 200.0
"""Default cap on requests per second to one bucket from one process (``storage_options``
key ``max_requests_per_second``): far below S3's 3,500 PUTs/s per prefix, so a job of many ranks
is not throttled, and enough for a texwatchd pass over 200 runs in a second."""

_MAX_TRIES = 8
_BACKOFF_BASE = 0.05  # seconds; doubled each try, capped at _BACKOFF_CAP, full jitter
_BACKOFF_CAP = 2.0
_TIMEOUT = "10s"  # per request; a writer's lease bounds how long it may wait (see _lease.py)

T = TypeVar("T")


@dataclass
class RequestCounts:
    """Requests to one bucket from this process: made, retried after a transient failure,
    failed for good, and seconds spent waiting for the rate cap."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    throttled_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "failures": self.failures,
                "throttled_seconds": self.throttled_seconds,
            }


class _RateCap:
    """A token bucket shared by the threads and event loops using one bucket."""

    def __init__(self, per_second: float) -> None:
        self._rate = per_second
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def delay(self) -> float:
        """Seconds the caller must wait before its request (0 under the cap); books its slot."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + 1.0 / self._rate
            # a burst of one second's worth is allowed: only wait past that
            wait = start - now - 1.0
            return wait if wait > 0 else 0.0


class Bucket:
    """One object store (a bucket, or the process's memory store) and how requests reach it."""

    def __init__(
        self, scheme: str, bucket: str, store: Any, per_second: float, timeout: float
    ) -> None:
        self.scheme = scheme
        self.bucket = bucket
        self.store = store  # an obstore store at the bucket's root
        self.timeout_seconds = timeout  # the longest one request may take
        self.counts = RequestCounts()
        self._cap = _RateCap(per_second)

    def url(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}".rstrip("/")

    def call(self, request: Callable[[], T]) -> T:
        """Run ``request`` (a blocking obstore call) under the cap, retrying transient errors."""
        tries = 0
        while True:
            wait = self._cap.delay()
            if wait:
                time.sleep(wait)
                self._count_wait(wait)
            try:
                result = request()
            except BaseException as err:
                tries += 1
                if not self._retry(err, tries):
                    raise
                time.sleep(_backoff(tries))
                continue
            self._count()
            return result

    async def acall(self, request: Callable[[], Awaitable[T]]) -> T:
        """``call`` for an async obstore request, waiting without blocking the event loop."""
        tries = 0
        while True:
            wait = self._cap.delay()
            if wait:
                await asyncio.sleep(wait)
                self._count_wait(wait)
            try:
                result = await request()
            except BaseException as err:
                tries += 1
                if not self._retry(err, tries):
                    raise
                await asyncio.sleep(_backoff(tries))
                continue
            self._count()
            return result

    def _count(self) -> None:
        with self.counts._lock:
            self.counts.requests += 1

    def _count_wait(self, seconds: float) -> None:
        with self.counts._lock:
            self.counts.throttled_seconds += seconds

    def _retry(self, err: BaseException, tries: int) -> bool:
        transient = _transient(err)
        with self.counts._lock:
            self.counts.requests += 1
            if transient and tries < _MAX_TRIES:
                self.counts.retries += 1
                return True
            if not _answer(err):
                self.counts.failures += 1
        return False


def _transient(err: BaseException) -> bool:
    """Throttling, a server error, a timeout or a dropped connection: worth another try."""
    import obstore.exceptions as oe

    if not isinstance(err, oe.GenericError):
        return False  # not found, precondition, permission, bad config: final answers
    text = str(err)
    return any(
        mark in text
        for mark in (" 429", " 500", " 502", " 503", " 504", "SlowDown", "timed out", "connect")
    )


def _answer(err: BaseException) -> bool:
    """A definite reply of the store (not found, exists, precondition failed, not modified)."""
    import obstore.exceptions as oe

    return isinstance(
        err,
        (FileNotFoundError, oe.AlreadyExistsError, oe.PreconditionError, oe.NotModifiedError),
    )


def _backoff(tries: int) -> float:
    return random.uniform(0.0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**tries))


_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")
_BUCKETS: dict[tuple[Any, ...], Bucket] = {}
_BUCKETS_LOCK = threading.Lock()


def buckets() -> list[Bucket]:
    """The object stores this process has reached, for the exporter's request counters."""
    with _BUCKETS_LOCK:
        return list(_BUCKETS.values())


def _bucket(scheme: str, bucket: str, options: Mapping[str, Any]) -> Bucket:
    """The shared ``Bucket`` for these options and credentials in the environment (one HTTP
    client per bucket and configuration: a changed ``AWS_*`` variable gets a new client)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    key = (scheme, bucket, tuple(sorted((k, repr(v)) for k, v in options.items())), env)
    with _BUCKETS_LOCK:
        found = _BUCKETS.get(key)
        if found is None:
            found = _BUCKETS[key] = _new_bucket(scheme, bucket, dict(options))
        return found


def _new_bucket(scheme: str, bucket: str, options: dict[str, Any]) -> Bucket:
    try:
        import obstore.store
    except ImportError as err:
        raise ImportError(
            f"a {scheme}:// store needs obstore: pip install 'texwatch[cloud]'"
        ) from err

    per_second = options.pop("max_requests_per_second", MAX_REQUESTS_PER_SECOND)
    if not isinstance(per_second, (int, float)) or not per_second > 0:
        raise ValueError(
            f"storage_options['max_requests_per_second'] must be a number > 0, got {per_second!r}"
        )
    if scheme == "memory":
        if options:
            raise ValueError(
                f"storage_options are not used by memory:// stores, got {sorted(options)}"
            )
        return Bucket(scheme, bucket, obstore.store.MemoryStore(), float(per_second), 0.0)
    client: dict[str, Any] = {"timeout": _TIMEOUT, "connect_timeout": "5s"}
    client.update(options.pop("client_options", None) or {})
    timeout = _seconds(client["timeout"], "storage_options['client_options']['timeout']")
    client["timeout"] = f"{timeout}s"  # obstore takes durations as text
    endpoint = options.get("endpoint") or options.get("endpoint_url")
    if endpoint is None and scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint"] = endpoint
    if isinstance(endpoint, str) and endpoint.startswith("http://"):
        client.setdefault("allow_http", True)  # an S3-compatible server on plain HTTP
    if "endpoint_url" in options:
        options["endpoint"] = options.pop("endpoint_url")
    if scheme == "s3" and "region" not in options and not os.environ.get("AWS_REGION"):
        options["region"] = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    try:
        from_url: Any = obstore.store.from_url  # options are checked by obstore, not typed here
        store = from_url(
            f"{scheme}://{bucket}",
            client_options=client,
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=timeout)},
            **options,
        )
    except Exception as err:  # obstore's configuration errors: name the argument
        raise ValueError(
            f"storage_options for {scheme}://{bucket} are not valid: {err}".splitlines()[0]
        ) from err
    return Bucket(scheme, bucket, store, float(per_second), timeout)


def _seconds(value: Any, what: str) -> float:
    """A duration given as seconds or as obstore's text ("10s", "500ms", "2m")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        units = (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
        unit = next(((u, f) for u, f in units if text.endswith(u)), None)
        try:
            seconds = float(text[: -len(unit[0])]) * unit[1] if unit else float(text)
        except ValueError:
            seconds = -1.0
    else:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(
            f"{what} must be a duration > 0 (seconds, or text like '10s'), got {value!r}"
        )
    return seconds


class ObjectPath:
    """A key prefix in an object store, with the ``pathlib`` methods the store code uses.

    "Folders" are key prefixes: one exists while an object lives under it. ``read_bytes`` and
    ``head`` raise ``FileNotFoundError`` for a missing object, as ``Path`` does.
    """

    __slots__ = ("_bucket", "key")

    def __init__(self, bucket: Bucket, key: str) -> None:
        self._bucket = bucket
        self.key = key.strip("/")

    @property
    def bucket(self) -> Bucket:
        return self._bucket

    def __str__(self) -> str:
        return self._bucket.url(self.key)

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ObjectPath)
            and other._bucket is self._bucket
            and other.key == self.key
        )

    def __hash__(self) -> int:
        return hash((id(self._bucket), self.key))

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self._bucket, f"{self.key}/{name}" if self.key else name)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name[1:] else self.name

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self._bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def resolve(self) -> ObjectPath:
        return self

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a prefix exists once an object is written under it."""

    # objects

    def read(self) -> tuple[bytes, dict[str, Any]]:
        """The object's bytes and metadata (``e_tag``...), from one GET, retried whole."""
        import obstore

        store = self._bucket.store

        def get() -> tuple[bytes, dict[str, Any]]:
            reply = obstore.get(store, self.key)
            return bytes(reply.bytes()), dict(reply.meta)

        return self._bucket.call(get)

    def read_bytes(self) -> bytes:
        return self.read()[0]

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def head(self) -> dict[str, Any]:
        """The object's metadata (``e_tag``, ``size``, ``last_modified``)."""
        import obstore

        return dict(self._bucket.call(lambda: obstore.head(self._bucket.store, self.key)))

    def put(self, data: bytes, mode: Any = None) -> dict[str, Any]:
        """Write the object; ``mode`` as obstore's (``"create"``, ``{"e_tag": ...}``)."""
        import obstore

        store = self._bucket.store
        return dict(self._bucket.call(lambda: obstore.put(store, self.key, data, mode=mode)))

    def create(self, data: bytes) -> str | None:
        """Write the object only if there is none (``If-None-Match: *``): its ETag, or None
        when one exists already."""
        import obstore.exceptions

        try:
            return str(self.put(data, mode="create")["e_tag"])
        except obstore.exceptions.AlreadyExistsError:
            return None

    def unlink(self, missing_ok: bool = False) -> None:
        import obstore

        if not missing_ok and not self.is_file():
            raise FileNotFoundError(f"{self} does not exist")
        self._bucket.call(lambda: obstore.delete(self._bucket.store, self.key))

    def is_file(self) -> bool:
        try:
            self.head()
        except FileNotFoundError:
            return False
        return True

    # prefixes

    def is_dir(self) -> bool:
        return any(True for _ in self._keys(limit_one=True))

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> Iterator[ObjectPath]:
        """The objects and prefixes directly under this one."""
        import obstore

        prefix = f"{self.key}/" if self.key else ""
        store = self._bucket.store
        listed = self._bucket.call(lambda: obstore.list_with_delimiter(store, prefix or None))
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed["common_prefixes"]]
        names += [o["path"].rsplit("/", 1)[-1] for o in listed["objects"]]
        for name in sorted(set(names)):
            yield self / name

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Entries directly under this prefix whose name matches ``pattern`` (one level)."""
        if "/" in pattern:
            raise ValueError(f"ObjectPath.glob takes one level, got {pattern!r}")
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    def remove_tree(self) -> None:
        """Delete every object under this prefix."""
        import obstore

        store = self._bucket.store
        for key in list(self._keys()):

            def delete(key: str = key) -> None:
                obstore.delete(store, key)

            self._bucket.call(delete)

    def _keys(self, limit_one: bool = False) -> Iterator[str]:
        import obstore

        prefix = f"{self.key}/" if self.key else None
        store = self._bucket.store

        def listing() -> list[str]:
            # every page is fetched inside the call: under the cap, and retried whole
            pages = obstore.list(store, prefix, chunk_size=1 if limit_one else 1000)
            if limit_one:
                return [meta["path"] for meta in next(iter(pages), [])][:1]
            return [meta["path"] for page in pages for meta in page]

        yield from self._bucket.call(listing)


Where = Path | ObjectPath
"""A run store's place: a local folder or an object-store prefix."""


def locate(
    where: str | os.PathLike[str] | ObjectPath,
    storage_options: Mapping[str, Any] | None = None,
    *,
    what: str = "path",
) -> Where:
    """The place ``where`` names: a ``Path`` for a local path or ``file://`` URL, an
    ``ObjectPath`` for an object-store URL.

    Args:
        where: a path, ``file:///abs/path``, ``s3://bucket/key``, ``gs://…``, ``az://…``,
            ``memory://name/key`` (one store per process, for tests).
        storage_options: obstore options for the store (``endpoint``, ``region``,
            ``access_key_id``…, ``client_options``) and ``max_requests_per_second``.
        what: the argument's name, for errors.

    Raises:
        ValueError: an unknown scheme, a URL without a bucket, or options for a local path.
        TypeError: ``where`` is not a path or URL.
    """
    if isinstance(where, ObjectPath):
        return where
    if isinstance(where, os.PathLike):
        where = os.fspath(where)
    if not isinstance(where, str):
        raise TypeError(f"{what} must be a path or URL string, got {type(where).__name__}")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise TypeError(f"storage_options must be a dict, got {type(storage_options).__name__}")
    if "://" not in where:
        if storage_options:
            raise ValueError(
                f"storage_options apply to object-store URLs only; {what}={where!r} is a local path"
            )
        return Path(where)
    parts = urlsplit(where)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"{what}={where!r}: a file:// URL names a local path (file:///abs/path), got "
                f"host {parts.netloc!r}"
            )
        return Path(unquote(parts.path))
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(
            f"{what}={where!r} has the unknown URL scheme {parts.scheme!r}; expected a local "
            f"path, file://, s3://, gs://, az:// or memory://"
        )
    if not parts.netloc:
        raise ValueError(f"{what}={where!r} names no bucket; expected {scheme}://BUCKET/KEY")
    if parts.query or parts.fragment:
        raise ValueError(f"{what}={where!r}: a store URL takes no ?query or #fragment")
    bucket = _bucket(REMOTE_SCHEMES[scheme], parts.netloc, storage_options or {})
    return ObjectPath(bucket, unquote(parts.path))


def is_plain_file(where: Where) -> bool:
    """A plain file (an object) where a store's folder (a prefix) should be."""
    if isinstance(where, ObjectPath):
        return where.is_file()
    return where.exists() and not where.is_dir()
