"""One writer per run on object storage: a lease object kept by conditional writes.

An object store has no ``flock`` and no process death to drop one, so a writer holds a lease:
the object ``.<run>.lock`` beside the run, created only if absent (``If-None-Match: *``) and
renewed every quarter lease by rewriting it only if it is still the writer's own
(``If-Match``). A second writer watches the lease: if it changes, its holder is alive and the
newcomer gets ``StoreLockedError``; if it stays unchanged for a whole lease, its holder is dead
(kill -9, a lost node) and the newcomer takes it over, again by ``If-Match``.

The holder writes only while it is sure nobody can have taken over: every request starts
within half a lease of the start of its last successful renewal, and a request lasts at most
the bucket's request timeout, which must be under half a lease. A newcomer waits a whole lease
from its first look, which came after that renewal, so the old holder's last write has ended
before the newcomer's first. The commit marker is also written by ``If-Match``
(``ObjectZarrStore``): a holder that lost its lease cannot publish rows.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, NoReturn

from texwatch._location import ObjectPath
from texwatch.errors import StoreLockedError

__all__ = ["LEASE_SECONDS", "Lease"]

LEASE_SECONDS = 30.0
"""Default lease: a killed writer's store can be resumed this long after its last renewal."""

_log = logging.getLogger("texwatch.store")


class Lease:
    """A writer's claim on the run at ``store``, held in the object ``key`` until ``release``."""

    def __init__(self, key: ObjectPath, store: ObjectPath, seconds: float, etag: str) -> None:
        self._key = key
        self._store = store
        self._seconds = seconds
        self._etag = etag
        self._renewed = time.monotonic()  # start of the request that wrote ``etag``
        self._lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.marker_etag: str | None = None  # the commit marker as this writer last saw it
        self._thread = threading.Thread(target=self._renew_loop, name="texwatch-lease", daemon=True)
        self._thread.start()

    @classmethod
    def take(cls, key: ObjectPath, store: ObjectPath, seconds: float = LEASE_SECONDS) -> Lease:
        """Hold ``key`` for the writer of ``store``; StoreLockedError if a live writer has it.

        Blocks up to a quarter lease (and a little) to see a live holder renew, or a whole
        lease to make sure a silent holder is dead.
        """
        import obstore.exceptions as oe

        timeout = store.bucket.timeout_seconds
        if not seconds >= 2.5 * timeout:
            raise ValueError(
                f"lease_seconds must be at least 2.5 × the request timeout ({timeout:g} s) of "
                f"{store.bucket.url('')}, got {seconds!r}"
            )
        started = time.monotonic()
        created = key.create(_body(store, seconds))
        if created is not None:
            return cls(key, store, seconds, created)
        first = time.monotonic()
        etag, holder = _look(key)
        announced = False
        while True:
            if etag is None:  # deleted meanwhile: create it again
                created = key.create(_body(store, seconds))
                if created is not None:
                    return cls(key, store, seconds, created)
                first = time.monotonic()
                etag, holder = _look(key)
                continue
            if holder.get("released") or time.monotonic() - first >= seconds:
                try:
                    renewed = time.monotonic()
                    reply = key.put(_body(store, seconds), mode={"e_tag": etag})
                except (oe.PreconditionError, FileNotFoundError):
                    first = time.monotonic()
                    etag, holder = _look(key)
                    continue
                lease = cls(key, store, seconds, reply["e_tag"])
                lease._renewed = renewed
                if not holder.get("released"):
                    _log.warning(
                        "took over %s from %s: its lease was not renewed for %.0f s",
                        store,
                        _describe(holder),
                        time.monotonic() - first,
                    )
                return lease
            if not announced and time.monotonic() - started > 1.0:
                announced = True
                _log.info(
                    "waiting up to %.0f s to learn whether the writer of %s (%s) is alive",
                    seconds,
                    store,
                    _describe(holder),
                )
            time.sleep(min(0.25, seconds / 16))
            now_etag, now_holder = _look(key)
            if now_etag not in (etag, None) and not now_holder.get("released"):
                raise StoreLockedError(
                    f"run store {str(store)!r} already has a live writer "
                    f"({_describe(now_holder)}); one store takes one writer at a time. "
                    f"Record to another URL, pass all_ranks=True if every rank of a "
                    f"distributed job records (each into URL/rank<r>), or stop the other "
                    f"job. (lease object {str(key)!r})",
                    store,
                )
            if now_etag != etag:
                first = time.monotonic()
            etag, holder = now_etag, now_holder

    @property
    def held(self) -> bool:
        return self._lost is None and not self._stop.is_set()

    def check(self) -> None:
        """Raise StoreLockedError unless a write started now surely ends within the lease."""
        if self._lost is not None:
            self.lost(self._lost)
        if self._stop.is_set():
            raise RuntimeError(f"the writer of {str(self._store)!r} is closed")
        if time.monotonic() - self._renewed > self._seconds / 2:
            self.lost(f"its lease was not renewed for {time.monotonic() - self._renewed:.1f} s")

    def lost(self, why: str) -> NoReturn:
        """Stop writing for good: ``why`` the lease can no longer be trusted."""
        if self._lost is None:
            self._lost = why
            _log.error("the writer of %s stops writing: %s", self._store, why)
        raise StoreLockedError(
            f"the writer of {str(self._store)!r} lost its lease and stopped writing: {why}; "
            f"nothing it wrote after its last commit is published",
            self._store,
        )

    def release(self) -> None:
        """Mark the lease released, so the next writer need not wait; safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self._lost is not None:
            return
        import obstore.exceptions as oe

        try:
            self._key.put(_body(self._store, self._seconds, released=True), {"e_tag": self._etag})
        except (oe.PreconditionError, FileNotFoundError):
            pass  # already taken over
        except Exception as err:  # the next writer waits one lease instead
            _log.warning("could not release the lease %s: %s", self._key, err)

    def _renew_loop(self) -> None:
        import obstore.exceptions as oe

        while not self._stop.wait(self._seconds / 4) and self._lost is None:
            started = time.monotonic()
            try:
                reply = self._key.put(_body(self._store, self._seconds), {"e_tag": self._etag})
            except (oe.PreconditionError, FileNotFoundError):
                self._lost = self._lost or "another writer took over its lease"
                _log.error("the writer of %s lost its lease to another writer", self._store)
                return
            except Exception as err:  # transient: the next round tries again
                _log.warning("renewing the lease of %s failed: %s", self._store, err)
                continue
            self._etag = reply["e_tag"]
            self._renewed = started


def _body(store: ObjectPath, seconds: float, released: bool = False) -> bytes:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "renewed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "store": str(store),
            "lease_seconds": seconds,
            "released": released,
        }
    ).encode()


def _look(key: ObjectPath) -> tuple[str | None, dict[str, Any]]:
    """The lease object's ETag and body, (None, {}) if there is none."""
    try:
        data, meta = key.read()
    except FileNotFoundError:
        return None, {}
    try:
        body = json.loads(data)
    except ValueError:
        body = {}
    return meta["e_tag"], body if isinstance(body, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if "pid" in holder and "host" in holder:
        return f"pid {holder['pid']} on {holder['host']}, renewed {holder.get('renewed')}"
    return "another process"
