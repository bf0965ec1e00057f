"""A TCP proxy in front of the real MariaDB or Redis that a test can take down in the two ways
servers fail: refusing connections (the port closed, open connections reset) or silently
(connections accepted and kept, nothing ever answered: a host that froze, a SIGSTOPped
server, a dropped route), or by blackholing the connections already open while new ones get
through (a failover that moved the server's address: the old peer never answers again). The project's processes reach it through their normal settings
(DB_HOST/DB_PORT, REDIS_HOST/REDIS_PORT), so their own timeouts and retries are what is tested.
"""

from __future__ import annotations

import select
import socket
import threading
import time

UP, SILENT, DOWN = "up", "silent", "down"


class OutageProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.mode = UP
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._opened = 0  # connections served so far, numbered in order
        self._blackholed_below = 0  # connections numbered below this are swallowed for good
        with socket.socket() as probe:  # pick a port once: refusing and coming back reuse it
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="outage-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ control

    def refuse(self) -> None:
        """Connections refused from now on; the open ones are reset."""
        with self._lock:
            self.mode = DOWN
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener:
            listener.close()
        for c in conns:
            _close(c)

    def go_silent(self) -> None:
        """Connections still accepted, open ones kept, but nothing is forwarded either way."""
        self.mode = SILENT

    def blackhole(self) -> None:
        """Every connection open now is swallowed for good, both ways, and never closed; new
        connections reach the server as before. restore() does not bring the old ones back."""
        with self._lock:
            self._blackholed_below = self._opened

    def restore(self) -> None:
        with self._lock:
            if self._listener is None:
                self._listen()
            self.mode = UP

    def close(self) -> None:
        self._stop.set()
        self.refuse()
        self._thread.join(5)

    # ------------------------------------------------------------ plumbing

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by refuse()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            while self.mode == SILENT and not self._stop.is_set():
                time.sleep(0.05)  # accepted, never answered (no upstream connection yet)
            if self.mode == DOWN:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            with self._lock:
                self._conns += [client, upstream]
                number = self._opened
                self._opened += 1
            pair = {client: upstream, upstream: client}
            while not self._stop.is_set() and self.mode != DOWN:
                if self.mode == SILENT or number < self._blackholed_below:
                    time.sleep(0.05)  # hold the bytes: neither side hears from the other
                    continue
                ready, _, _ = select.select(list(pair), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except OSError:
            return
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
