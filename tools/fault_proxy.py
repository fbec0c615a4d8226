"""A loopback TCP proxy that can cut the link: blackhole (silent) or reset (connections die)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; ``cut()`` and ``restore()``."""

    target: int
    port: int = 0
    mode: str = 'forward'               # forward | blackhole | reset
    _server: socket.socket = field(init=False)
    _pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(('127.0.0.1', self.port))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._pump, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.mode == 'reset':
                client.close()
                continue
            try:
                upstream = socket.create_connection(('127.0.0.1', self.target), timeout=2)
            except OSError:
                client.close()  # broker down: the client sees a refused/closed connection
                continue
            with self._lock:
                self._pairs.append((client, upstream))

    def _pump(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pairs = list(self._pairs)
            sockets = [s for pair in pairs for s in pair]
            if not sockets:
                self._stop.wait(0.01)
                continue
            try:
                readable, _, _ = select.select(sockets, [], [], 0.05)
            except (OSError, ValueError):
                self._prune()
                continue
            for sock in readable:
                pair = next((p for p in pairs if sock in p), None)
                if pair is None:
                    continue
                other = pair[1] if sock is pair[0] else pair[0]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b''
                if not data:
                    self._close(pair)
                    continue
                if self.mode == 'blackhole':
                    continue  # swallowed: both ends think the link is up
                try:
                    other.sendall(data)
                except OSError:
                    self._close(pair)

    def _close(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.close()

    def _prune(self) -> None:
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            if any(s.fileno() < 0 for s in pair):
                self._close(pair)

    def cut(self, mode: str) -> None:
        """``blackhole``: keep connections, drop every byte; ``reset``: close them all."""
        self.mode = mode
        if mode == 'reset':
            with self._lock:
                pairs = list(self._pairs)
            for pair in pairs:
                self._close(pair)

    def restore(self) -> None:
        """Forward again; a blackholed connection is closed so the client reconnects."""
        if self.mode == 'blackhole':
            self.cut('reset')
        self.mode = 'forward'

    def close(self) -> None:
        """Stop the proxy."""
        self._stop.set()
        self._server.close()
        self.cut('reset')
