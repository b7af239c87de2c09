"""Rank 0's metrics sink: MLflow, batched and off the training thread.

One ``log_metric`` call is a round trip to the tracking server, which on a small machine costs
as much as a CPU training step. Points are queued and a background thread sends them with
``log_batch`` (up to 1000 metrics a call). If the server is unreachable the points stay queued
and are retried; ``close`` waits a bounded time and reports what could not be delivered.

A checkpoint is a promise that everything before it is recorded: a run resumed from it does not
train those steps again, so a point still queued when the worker dies would never be logged.
``flush`` (called just before each checkpoint) delivers the queue and hands back whatever the
server did not take, for the checkpoint to carry and ``requeue`` to send after a resume. A point
sent twice is harmless: MLflow stores a (key, step, timestamp, value) once.
"""

from __future__ import annotations

import copy
import logging
import queue
import tempfile
from pathlib import Path
import threading
import time

log = logging.getLogger("depthlab")

MAX_BATCH = 1000


class MlflowSink:
    def __init__(self, run_id: str, *, flush_every_s: float = 2.0, close_timeout_s: float = 60.0,
                 system_metrics: bool = False):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(), run_id
        self.flush_every_s, self.close_timeout_s = flush_every_s, close_timeout_s
        self._queue: queue.Queue = queue.Queue()
        self._pending: list = []
        self._stop = threading.Event()
        self._wake = threading.Event()  # flush: send now, not at the next tick
        self._sent = threading.Condition()  # notified after every delivery attempt
        self._started = self._attempts = 0  # delivery attempts begun and ended
        self.delivered = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-sink", daemon=True)
        self._thread.start()
        self._monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(run_id, sampling_interval=10,
                                                     resume_logging=True)
                self._monitor.start()
            except Exception as exc:  # missing psutil/NVML: training goes on without them
                log.warning("no system metrics: %s", exc)

    def set_tag(self, key: str, value: str) -> None:
        try:
            self.client.set_tag(self.run_id, key, value)
        except Exception as exc:  # a tag is not worth stopping the run for
            log.warning("could not tag MLflow run %s with %s: %s", self.run_id, key, exc)

    def log_json(self, data: dict, artifact_file: str) -> None:
        """A small JSON artifact (the layer responses); a failure only warns."""
        try:
            self.client.log_dict(self.run_id, data, artifact_file)
        except Exception as exc:
            log.error("could not log %s to MLflow run %s: %s", artifact_file, self.run_id, exc)

    def log_model(self, model, example) -> None:
        """The trained model and its signature (inputs: normalised NCHW float images)."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        was_training = model.training
        model.eval()
        with torch.no_grad():
            output = model(example)
        model.train(was_training)
        signature = infer_signature(example.float().cpu().numpy(), output.float().cpu().numpy())
        # Saved as an MLflow model folder and logged as the run's artifacts ("runs:/<id>/model"),
        # the path the tracking server proxies for every artifact. MLflow's default format,
        # pt2 (torch.export), stores a traced graph: loading it runs no pickled code.
        try:
            with tempfile.TemporaryDirectory(prefix="depthlab-model-") as tmp:
                path = Path(tmp) / "model"
                cpu_copy = copy.deepcopy(model).cpu().eval()  # the caller's model stays put
                mlflow.pytorch.save_model(cpu_copy, str(path), signature=signature,
                                          input_example=example.float().cpu().numpy())
                self.client.log_artifacts(self.run_id, str(path), "model")
        except Exception as exc:
            log.error("could not log the model to MLflow run %s: %s", self.run_id, exc)

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            self._queue.put(Metric(key=key, value=float(value), timestamp=now, step=int(step)))

    def flush(self, timeout_s: float = 10.0) -> list[tuple]:
        """Deliver what is queued, waiting at most ``timeout_s``; return what is still undelivered.

        The answer is plain (key, value, timestamp_ms, step) tuples, which a checkpoint can
        carry. It errs on the side of sending twice: a point in flight when the wait ends is in
        the answer too.
        """
        with self._sent:
            target = self._started + 1  # an attempt that begins after this call
            self._wake.set()
            self._sent.wait_for(lambda: self._attempts >= target, timeout=timeout_s)
        waiting = list(self._queue.queue)  # the queue before the list: a point moves that way
        return [(m.key, m.value, m.timestamp, m.step) for m in list(self._pending) + waiting]

    def requeue(self, points) -> None:
        """Send points a checkpoint carried (``flush``'s answer before the worker stopped)."""
        from mlflow.entities import Metric

        for key, value, timestamp, step in points:
            self._queue.put(Metric(key=key, value=float(value), timestamp=int(timestamp),
                                   step=int(step)))

    def _drain(self) -> None:
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _send(self) -> bool:
        # Only the background thread sends, and close() once it has stopped.
        with self._sent:
            self._started += 1
        delivered = self._send_pending()
        with self._sent:
            self._attempts += 1
            self._sent.notify_all()
        return delivered

    def _send_pending(self) -> bool:
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
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            if not self._stop.is_set():
                self._send()

    def _publish_last_samples(self) -> None:
        """Log the system-metric samples MLflow's monitor took since its last publication.

        The monitor logs a window of samples when the window's wait ends; ``finish`` ends the
        wait early and drops that window, so a run shorter than the sampling interval (10 s: a
        one-epoch demo run here) had no system metrics at all, and every run lost its last ones.
        """
        try:
            leftover = self._monitor.aggregate_metrics()
            if leftover:
                self._monitor.publish_metrics(leftover)
                self._monitor.mlflow_logger.flush()
        except Exception as exc:  # a late system metric is not worth failing the run for
            log.warning("could not log the last system metrics: %s", exc)

    def close(self) -> int:
        """Deliver what is buffered; return the number of points that could not be sent."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        if self._monitor is not None:
            self._monitor.finish()
            self._publish_last_samples()
        deadline = time.monotonic() + self.close_timeout_s
        while not self._send() and time.monotonic() < deadline:
            time.sleep(1.0)
        lost = len(self._pending) + self._queue.qsize()
        if lost:
            log.error("could not deliver %d metric points to MLflow run %s", lost, self.run_id)
        return lost
