"""A fault-injecting TCP proxy for the remote-store tests.

``FaultProxy(upstream)`` listens on a free loopback port and forwards each
connection to ``upstream``; its ``mode`` (read when a connection is
accepted, so a test may change it between requests) decides what happens
to the server's answer:

=============  ==============================================================
``pass``       forward both ways untouched
``latency``    sleep ``latency`` seconds before forwarding each chunk of the answer
``reset``      forward ``after`` bytes of the answer, then close with a TCP RST
``truncate``   forward ``after`` bytes of the answer, then close cleanly (FIN)
``garbage``    replace every byte of the answer with random bytes
``bitflip``    flip one bit of the byte that follows the first ``marker`` in the
               answer (``b"\\r\\n\\r\\n"``: the first byte of an HTTP body)
``blackhole``  accept, read nothing, answer nothing, until stopped
=============  ==============================================================

Everything is bounded: at most ``max_connections`` at once (more are
closed on accept), every thread is a daemon that :meth:`FaultProxy.stop`
wakes by shutting its sockets down and then joins with a timeout, and the
counters (``connections``, ``bytes_down``: bytes of answers forwarded to
clients) let a test check how much was really sent.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

MODES = ("pass", "latency", "reset", "truncate", "garbage", "bitflip", "blackhole")
_CHUNK = 64 * 1024


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        mode: str = "pass",
        *,
        latency: float = 0.05,
        after: int = 0,
        marker: bytes = b"\r\n\r\n",
        seed: int = 0,
        max_connections: int = 32,
    ) -> None:
        self.upstream = upstream
        self.mode = mode
        self.latency = latency
        self.after = after
        self.marker = marker
        self.max_connections = max_connections
        self.connections = 0
        self.bytes_down = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._listener.settimeout(0.1)
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.drop()
        self._listener.close()
        for thread in list(self._threads):
            thread.join(timeout=5)

    def drop(self) -> None:
        """Close every open connection cleanly, as a server closes idle
        keep-alive connections."""
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _shut(sock)

    def __enter__(self) -> FaultProxy:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- connections ---------------------------------------------------------------------------
    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed by stop()
            client.settimeout(None)
            with self._lock:
                busy = len(self._sockets) >= 2 * self.max_connections
                self.connections += 1
            if busy or not self._track(client):
                self._close(client)
                continue
            mode = self.mode
            if mode == "blackhole":
                continue  # held open, never answered, closed by stop()
            self._spawn(self._serve, client, mode)

    def _serve(self, client: socket.socket, mode: str) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._close(client)
            return
        upstream.settimeout(None)
        if not self._track(upstream):
            self._close(upstream)
            self._close(client)
            return
        self._spawn(self._pump_up, client, upstream)
        try:
            self._pump_down(upstream, client, mode)
        except OSError:
            pass
        finally:
            self._close(upstream)
            self._close(client)

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(_CHUNK):
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _pump_down(self, upstream: socket.socket, client: socket.socket, mode: str) -> None:
        sent = 0
        tail = b""  # the end of what was forwarded, to find a marker split between chunks
        flipped = False
        while data := upstream.recv(_CHUNK):
            if self._stopping.is_set():
                return
            if mode == "latency":
                time.sleep(self.latency)
            elif mode == "garbage":
                with self._lock:
                    data = self._random.randbytes(len(data))
            elif mode == "bitflip" and not flipped:
                data, flipped = self._flip(tail, data)
                tail = (tail + data)[-len(self.marker) :]
            elif mode in ("reset", "truncate") and sent + len(data) >= self.after:
                client.sendall(data[: self.after - sent])
                self._count(self.after - sent)
                if mode == "reset":  # SO_LINGER with a zero timeout: close sends RST, not FIN
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    with self._lock:
                        self._sockets.discard(client)
                    # Wake the thread reading the client (a close alone does not, and
                    # the socket lives while it reads); SHUT_RD sends nothing, where
                    # SHUT_WR would send a FIN before the RST.
                    client.shutdown(socket.SHUT_RD)
                    client.close()
                else:
                    self._close(client)
                return
            client.sendall(data)
            sent += len(data)
            self._count(len(data))

    def _flip(self, tail: bytes, data: bytes) -> tuple[bytes, bool]:
        """``data`` with one bit flipped in the byte after the marker, if
        that byte is in it; and whether it was."""
        seen = tail + data
        found = seen.find(self.marker)
        if found < 0:
            return data, False
        at = found + len(self.marker) - len(tail)
        if at >= len(data):
            return data, False  # the marker ends this chunk: next time, at the start of the next
        with self._lock:
            bit = 1 << self._random.randrange(8)
        return data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :], True

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        _shut(sock)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_down += n


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
