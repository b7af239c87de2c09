"""Rank 0's metrics sink: MLflow, batched and off the training thread.

One ``log_metric`` call costs about 100 ms against a tracking server on a small machine, which
would be most of a CPU step. Points are queued and a background thread sends them with
``log_batch`` (up to 1000 metrics a call). If the server is unreachable the points stay queued
and are retried; ``close`` waits a bounded time and reports what could not be delivered.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger("depthlab")

MAX_BATCH = 1000


class MlflowSink:
    def __init__(self, run_id: str, *, flush_every_s: float = 2.0, close_timeout_s: float = 60.0):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(), run_id
        self.flush_every_s, self.close_timeout_s = flush_every_s, close_timeout_s
        self._queue: queue.Queue = queue.Queue()
        self._pending: list = []
        self._stop = threading.Event()
        self.delivered = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-sink", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            self._queue.put(Metric(key=key, value=float(value), timestamp=now, step=int(step)))

    def _drain(self) -> None:
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _send(self) -> bool:
        self._drain()
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
            except Exception as exc:  # server down or slow: keep the points, try again later
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning("MLflow unreachable (%s); %d points buffered", exc, len(self._pending))
                return False
            del self._pending[: len(batch)]
            self.delivered += len(batch)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            self._send()

    def close(self) -> int:
        """Deliver what is buffered; return the number of points that could not be sent."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + self.close_timeout_s
        while not self._send() and time.monotonic() < deadline:
            time.sleep(1.0)
        lost = len(self._pending) + self._queue.qsize()
        if lost:
            log.error("could not deliver %d metric points to MLflow run %s", lost, self.run_id)
        return lost
