"""The engine's health and drain, as seen from outside the stub process: files in a control directory.

Triton 2.51's Python backend gives a model no way to mark itself not ready, and a killed stub leaves
/v2/health/ready at 200. So the supervisor that started tritonserver (scripts/serve.py) watches a control
directory (env QWEN_TRITON_CONTROL_DIR), and each model instance's watchdog thread keeps it informed:
  <instance>.alive    rewritten every WATCH_SECONDS while the engine is healthy: JSON with the stub's pid,
                      the heartbeat age, whether it drains and the requests in flight. A file that stops
                      changing, or whose pid is gone, means a dead or frozen stub.
  <instance>.failed   written once when the engine cannot serve (its thread died or stalled), with why.
and the supervisor asks for a drain by creating:
  drain               the engines refuse new requests (retryable) and finish the admitted ones.
On failure the watchdog also fails every request in flight at once and zeroes the load gauges, so neither
clients nor the autoscaler wait on a dead engine. Without the env variable (no supervisor) it still does
both, and only the files are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CONTROL_DIR_ENV = "QWEN_TRITON_CONTROL_DIR"
DRAIN_FILE = "drain"
WATCH_SECONDS = 0.25


def control_dir() -> Path | None:
    value = os.environ.get(CONTROL_DIR_ENV)
    return Path(value) if value else None


class EngineWatchdog(threading.Thread):
    """Beats for a healthy engine, reports a failed one, and starts the engine's drain when asked."""

    def __init__(self, engine, instance: str, on_failure, directory: Path | None = None):
        super().__init__(name="qwen-watchdog", daemon=True)
        self._engine = engine
        self._on_failure = on_failure  # called once with the reason, on this thread
        self._directory = directory if directory is not None else control_dir()
        self._name = instance.replace("/", "_")
        self._stopped = threading.Event()
        self.failed: str | None = None

    def run(self) -> None:
        while not self._stopped.wait(WATCH_SECONDS):
            try:
                self._check()
            except Exception:  # the watchdog must outlive any one bad check
                log.exception("engine watchdog check failed")

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2)
        if self._directory is not None and self.failed is None:
            (self._directory / f"{self._name}.alive").unlink(missing_ok=True)  # a clean stop, not a death

    def _check(self) -> None:
        if self.failed is not None:
            return
        reason = self._engine.failure()
        if reason is not None:
            self.failed = reason
            log.error("qwen engine failed: %s", reason)
            self._write("failed", reason)
            self._on_failure(reason)
            return
        if self._directory is not None and not self._engine.draining and (self._directory / DRAIN_FILE).exists():
            log.info("qwen: drain requested; refusing new requests, finishing %d", self._engine.num_in_flight())
            self._engine.start_draining()
        state = {
            "pid": os.getpid(),
            "heartbeat_age_s": round(self._engine.heartbeat_age(), 3),
            "draining": self._engine.draining,
            "in_flight": self._engine.num_in_flight(),  # read after `draining`: it can only fall from here
        }
        self._write("alive", json.dumps(state))

    def _write(self, kind: str, text: str) -> None:
        """Write-then-rename: the supervisor never reads half a file."""
        if self._directory is None:
            return
        target = self._directory / f"{self._name}.{kind}"
        partial = target.with_suffix(f".{kind}.partial")
        partial.write_text(text)
        partial.replace(target)
