"""A threaded WSGI server whose slow, idle or hostile clients cannot stall the other clients.

The accepting thread only accepts: each connection gets its own thread, which does the TLS
handshake and reads the request under :data:`CONNECTION_TIMEOUT`, so a client that connects and
stays silent costs one thread for a bounded time instead of blocking every scrape behind it.
Closing the server ends the connections still open and joins their threads.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

__all__ = ["CONNECTION_TIMEOUT", "ConnectionServer", "make_server"]

_log = logging.getLogger("texwatch.daemon")

CONNECTION_TIMEOUT = 10.0
"""Seconds a connection may stay silent (TLS handshake, request, or a send) before it is dropped."""


class _QuietHandler(WSGIRequestHandler):
    """Scrapes are not logged: a scrape every few seconds would flood the daemon's log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ConnectionServer(WSGIServer):
    """A WSGI server serving each connection, TLS handshake included, in its own thread."""

    request_queue_size = socket.SOMAXCONN

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.address_family = family
        self._tls = tls
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, socket.socket] = {}
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve,
            args=(request, client_address),
            name="texwatch-metrics-connection",
            daemon=True,
        )
        with self._lock:
            self._connections[thread] = request
        thread.start()

    def _serve(self, sock: socket.socket, client_address: Any) -> None:
        me = threading.current_thread()
        try:
            sock.settimeout(CONNECTION_TIMEOUT)
            if self._tls is not None:
                # Wrapping does no I/O; under the lock so that close() sees the socket in use.
                with self._lock:
                    sock = self._tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                    self._connections[me] = sock
                sock.do_handshake()
            self.finish_request(sock, client_address)
        except OSError as err:
            # A client that stayed silent, hung up, or failed the handshake: its problem only.
            _log.debug("metrics connection from %s dropped: %s", client_address, err)
        except Exception:
            _log.exception("metrics request from %s failed", client_address)
        finally:
            with self._lock:
                self._connections.pop(me, None)
            self.shutdown_request(sock)

    def server_close(self) -> None:
        """Stop listening, end the connections still open and join their threads."""
        super().server_close()
        with self._lock:
            open_now = list(self._connections.items())
            for _, sock in open_now:
                # The plain socket's shutdown, also for a TLS socket: it wakes the thread blocked
                # on it without touching the TLS state that thread is using. An OSError: its
                # thread closed it already.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
        for thread, _ in open_now:
            thread.join()


def make_server(
    app: Callable[..., Any], *, bind: str, port: int, tls: ssl.SSLContext | None
) -> ConnectionServer:
    """A server for ``app`` bound to ``bind:port``, IPv4 or IPv6 as ``bind`` resolves.

    The address family is the first ``getaddrinfo`` answers for a passive stream socket, as
    prometheus_client's own server chooses it, so ``::1`` or ``::`` bind an IPv6 socket.
    """
    infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    server = ConnectionServer((str(sockaddr[0]), port), family, tls)
    server.set_app(app)
    return server
