"""A small fault-injecting TCP proxy for loopback tests: resets, 5xx answers and stalls."""

from __future__ import annotations

import socket
import struct
import threading
import time


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``.

    ``cut_connections``: that many connections are reset (RST) after ``cut_after`` bytes of the
    upstream's answer. ``fail_requests``: that many connections get ``503 Slow Down`` instead of
    an answer. ``stall_connections``: that many connections hold the upstream's answer for
    ``stall_s`` seconds before passing it on (a slow server). Counters say how many faults
    were injected.
    """

    def __init__(self, upstream_port: int, *, cut_connections: int = 0, cut_after: int = 20_000,
                 fail_requests: int = 0, stall_connections: int = 0, stall_s: float = 5.0):
        self.upstream_port = upstream_port
        self.cut_left, self.cut_after, self.fail_left = cut_connections, cut_after, fail_requests
        self.stall_left, self.stall_s = stall_connections, stall_s
        self.cuts = self.failures = self.stalls = 0
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take(self, name):
        with self.lock:
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                return True
            return False

    def _serve(self, client):
        if self._take("fail_left"):
            client.recv(65536)
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            with self.lock:
                self.failures += 1
            client.close()
            return
        cut = self._take("cut_left")
        stall = self._take("stall_left")
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump_up():
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=pump_up, daemon=True).start()
        sent = 0
        try:
            if stall:
                with self.lock:
                    self.stalls += 1
                time.sleep(self.stall_s)
            while data := upstream.recv(65536):
                if cut and sent + len(data) > self.cut_after:
                    client.sendall(data[: max(0, self.cut_after - sent)])
                    with self.lock:
                        self.cuts += 1
                    # Wake the other thread's recv first (a blocked recv keeps the socket
                    # open past close), then SO_LINGER 0: close sends a reset.
                    client.shutdown(socket.SHUT_RD)
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self):
        self._stop = True
        self.server.close()
