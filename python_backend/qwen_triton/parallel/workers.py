"""The rank processes of a tensor-parallel engine: started, driven and stopped by rank 0.

Rank 0 is the engine's own process (it owns the requests, the scheduler and the sampler); ranks 1..N-1
are fresh interpreters it starts (`python -m qwen_triton.parallel.workers ...`), each building its shard
of the model through the same engine constructor. Fresh, not forked (CUDA cannot be forked) and not
multiprocessing's spawn either: spawn copies the parent's import path into the child, and inside Triton's
Python-backend stub that path belongs to another Python build than the one that runs the worker. The
interpreter is the one whose site-packages hold torch (a virtualenv's own python, say), so the worker
imports exactly what rank 0 imported.

The protocol is one pipe a worker, one way, rank 0 -> worker: the pickled engine settings once, then
("step", inputs) messages and a final ("stop",). A step's inputs are host lists (token ids, positions,
slots, block tables); the workers run the same forward pass and the collectives inside it keep the ranks
in lock-step, so nothing comes back. Input tokens that only rank 0's device holds (a step launched before
the previous one's tokens were read) are broadcast from rank 0 inside the step. A second pipe, worker ->
rank 0, carries "hello" once (the worker is about to join the process group) and an exception's
traceback when a worker fails.

Failure: a monitor thread waits on every worker's report pipe, which reads end-of-file the moment the
worker's process ends (nothing else holds its writing end). When one ends while the engine runs, the
engine is failed for good: the step in progress raises `WorkerDied` (gloo notices the closed connection at
once; on NCCL the monitor aborts the process group so the blocked collective returns), every later step
raises it at once, and the remaining workers are stopped. A worker whose rank 0 went away, however it
ended, sees its command pipe close and exits. Nothing is left running.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing.connection
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.distributed as dist

from qwen_triton.parallel.group import TensorParallelGroup, join_group, open_store

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # a worker's imports and its "hello" (not its model load: that is a collective)
STOP_TIMEOUT_S = 10.0


class WorkerDied(RuntimeError):
    """A tensor-parallel rank process ended while the engine needed it."""


@dataclass
class RankContext:
    """What a worker process gets: its rank, where the group meets, and its two pipe ends."""

    rank: int
    world_size: int
    store_port: int
    commands: Connection  # from rank 0
    reports: Connection  # to rank 0

    def join(self, device: torch.device) -> TensorParallelGroup:
        self.reports.send(("hello", os.getpid()))
        return join_group(self.rank, self.world_size, device, self.store_port)

    def serve(self, run_step: Callable) -> None:
        """Run rank 0's steps until it says stop or goes away."""
        while True:
            try:
                message = self.commands.recv()
            except EOFError:
                log.warning("tensor-parallel rank %d: rank 0 went away; exiting", self.rank)
                return
            if message[0] == "stop":
                return
            run_step(message[1])


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r's device: the r-th GPU after rank 0's (cuda:k -> cuda:k+r); every rank of a CPU engine on cpu."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


@dataclass
class _Worker:
    rank: int
    process: subprocess.Popen
    commands: Connection
    reports: Connection


class RankProcesses:
    """Ranks 1..world_size-1, as seen from rank 0. Each worker runs `entry(context, payload)`: a
    module-level function (the worker imports it by module and name) and a picklable payload."""

    def __init__(self, world_size: int, entry: Callable, payload):
        self.world_size = world_size
        self._store = open_store(world_size)
        self._failure: str | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._workers: list[_Worker] = []
        entry_name = f"{entry.__module__}:{entry.__qualname__}"
        for rank in range(1, world_size):
            self._workers.append(self._start(rank, entry_name, pickle.dumps(payload)))

    def _start(self, rank: int, entry_name: str, payload: bytes) -> _Worker:
        commands_read, commands_write = os.pipe()
        reports_read, reports_write = os.pipe()
        process = subprocess.Popen(
            [_python_executable(), "-m", "qwen_triton.parallel.workers", entry_name]
            + [str(rank), str(self.world_size), str(self._store.port), str(commands_read), str(reports_write)],
            pass_fds=(commands_read, reports_write),
        )
        os.close(commands_read)
        os.close(reports_write)  # from here on only the worker holds it: end-of-file means it is gone
        commands = Connection(commands_write, readable=False)
        commands.send_bytes(payload)
        return _Worker(rank, process, commands, Connection(reports_read, writable=False))

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def join(self, device: torch.device) -> TensorParallelGroup:
        """Wait for every worker's hello (a worker that dies first is reported, not waited for), then
        join the group as rank 0 and start watching the workers."""
        waiting = {worker.reports: worker for worker in self._workers}
        while waiting:
            ready = multiprocessing.connection.wait(list(waiting), timeout=START_TIMEOUT_S)
            if not ready:
                ranks = [worker.rank for worker in waiting.values()]
                raise WorkerDied(f"tensor-parallel ranks {ranks} did not start in {START_TIMEOUT_S:.0f} s")
            for handle in ready:
                worker = waiting.pop(handle)
                try:
                    kind, detail = worker.reports.recv()
                except EOFError:  # its process ended
                    raise WorkerDied(self._describe_death(worker)) from None
                if kind != "hello":
                    raise WorkerDied(f"tensor-parallel rank {worker.rank} failed to start:\n{detail}")
        group = join_group(0, self.world_size, device, self._store.port, store=self._store)
        self._monitor = threading.Thread(target=self._watch, name="qwen-tp-monitor", daemon=True)
        self._monitor.start()
        return group

    def send_step(self, inputs) -> None:
        """Hand one step's inputs to every worker (they run it as rank 0 does)."""
        self.raise_if_failed()
        for worker in self._workers:
            try:
                worker.commands.send(("step", inputs))
            except OSError:  # a closed pipe: the worker is gone
                self._fail(self._describe_death(worker))
                self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise WorkerDied(self._failure)

    @contextlib.contextmanager
    def guard(self):
        """Run rank 0's part of a step: an error that a dead worker caused (the collective's peer is gone)
        comes out as WorkerDied with the worker's story, not as a bare communication error."""
        self.raise_if_failed()
        try:
            yield
        except Exception as error:
            dead = self._first_dead(wait_s=2.0)
            if dead is None:
                raise
            self._fail(self._describe_death(dead))
            raise WorkerDied(self._failure) from error

    def stop(self) -> None:
        """Stop every worker: ask, wait, then terminate and kill what is left; no process survives."""
        with self._lock:
            self._stopping = True
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.commands.send(("stop",))
        for worker in self._workers:
            for escalate in (None, worker.process.terminate, worker.process.kill):
                if escalate is not None:
                    escalate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(STOP_TIMEOUT_S)
                    break
            with contextlib.suppress(OSError):
                worker.commands.close()

    # -- failure ---------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Wait until a worker's report pipe reads end-of-file (after its traceback, if it sent one)."""
        reports = {worker.reports: worker for worker in self._workers}
        ready = multiprocessing.connection.wait(list(reports))
        with self._lock:
            if self._stopping:
                return
        self._fail(self._describe_death(reports[ready[0]]))
        _abort_blocked_collectives()

    def _fail(self, message: str) -> None:
        with self._lock:
            if self._failure is not None:
                return
            self._failure = message
        log.error("%s; failing the engine", message)
        threading.Thread(target=self.stop, name="qwen-tp-stop", daemon=True).start()

    def _first_dead(self, wait_s: float) -> _Worker | None:
        """A worker whose process ended (waiting up to `wait_s` for one to), or None."""
        ready = multiprocessing.connection.wait([worker.reports for worker in self._workers], timeout=wait_s)
        for worker in self._workers:
            if worker.reports in ready:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(wait_s)
                    return worker
        return None

    def _describe_death(self, worker: _Worker, wait_s: float = 2.0) -> str:
        """'tensor-parallel rank r (pid p) was killed by SIGKILL', with the traceback it reported, if any."""
        detail = ""
        with contextlib.suppress(OSError, EOFError):
            while worker.reports.poll():
                kind, text = worker.reports.recv()
                if kind == "error":
                    detail = f":\n{text}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(wait_s)
        code = worker.process.returncode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        return f"tensor-parallel rank {worker.rank} (pid {worker.process.pid}) {how}{detail}"


def _abort_blocked_collectives() -> None:
    """NCCL: a collective whose peer is dead waits for its timeout; aborting the communicators makes it
    return an error now. gloo needs nothing (the peer's closed socket fails the collective). Untested on
    GPUs here (no multi-GPU machine); torch names this function privately."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is None or not dist.is_initialized() or dist.get_backend() != "nccl":
        return
    with contextlib.suppress(Exception):
        abort()


def _python_executable() -> str:
    """The interpreter for workers: the one whose site-packages hold this torch (a virtualenv's python sets
    up its site-packages, editable installs' import hooks included, as rank 0 has them). Not simply
    sys.executable: inside Triton's Python-backend stub that is the base interpreter, which knows neither
    the virtualenv nor its hooks."""
    prefix = Path(torch.__file__).resolve().parents[4]  # <prefix>/lib/python3.X/site-packages/torch/__init__.py
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3", "python"):
        candidate = prefix / "bin" / name
        if candidate.exists():
            return str(candidate)
    return sys.executable


def _worker_main(entry: Callable, context: RankContext, payload) -> None:
    """A worker's process body: `entry(context, payload)`, its failure reported to rank 0 before exiting."""
    logging.basicConfig(level=logging.INFO, format=f"[tp rank {context.rank}] %(levelname)s %(name)s: %(message)s")
    try:
        entry(context, payload)
    except BaseException:  # noqa: BLE001 — whatever it was, rank 0 must hear it before the exit code
        with contextlib.suppress(OSError):
            context.reports.send(("error", traceback.format_exc()))
        sys.exit(1)
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def main(argv: list[str]) -> None:
    """python -m qwen_triton.parallel.workers MODULE:FUNCTION RANK WORLD_SIZE STORE_PORT COMMANDS_FD REPORTS_FD"""
    entry_name, rank, world_size, port, commands_fd, reports_fd = argv
    module_name, _, function_name = entry_name.partition(":")
    entry = getattr(importlib.import_module(module_name), function_name)
    commands = Connection(int(commands_fd), writable=False)
    reports = Connection(int(reports_fd), readable=False)
    payload = pickle.loads(commands.recv_bytes())
    _worker_main(entry, RankContext(int(rank), int(world_size), int(port), commands, reports), payload)


if __name__ == "__main__":
    main(sys.argv[1:])
