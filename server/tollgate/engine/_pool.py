"""The embedded engine as a pool of worker processes, so a runaway evaluation can be killed on its deadline.

The Go `rego` package cannot cancel an evaluation from the outside, and an in-process thread that runs
one past its deadline would keep burning a core (and memory) until it finishes. Each worker process
holds one OPA engine; the server hands one input to one idle worker at a time. When the deadline
passes, the caller gets its answer (a DENY) at once, the worker is killed, and a replacement starts in
the background while the other workers keep serving.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass

from tollgate.bundle import Bundle
from tollgate.engine._base import EngineError, EvaluationTimeout, decode_envelope

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">I")
_RECV_SIZE = 65536  # below malloc's mmap threshold: no page-fault storm per read


@dataclass(frozen=True)
class EngineConfig:
    """How the embedded engine runs."""

    #: The document evaluated for every request, as a path under data.
    entrypoint: str = "tollgate/decision"
    #: Worker processes, each with its own OPA engine; 0 means one per CPU.
    workers: int = 0
    #: Deadline for one evaluation, in seconds (including any wait for a free worker).
    eval_timeout: float = 0.050
    #: How long a new worker may take to load and compile the bundle, in seconds.
    start_timeout: float = 60.0
    #: Evaluations queued on one worker at once; deeper queues batch more work per wake-up.
    max_queue_per_worker: int = 32
    #: When one evaluation has run this long (seconds), the requests queued behind it on the same
    #: worker are also sent to other workers; whichever answer comes first is used.
    hedge_after: float = 0.005

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)


class _Pending:
    """One evaluation sent to a worker and not yet answered."""

    __slots__ = ("deadline", "future", "payload", "timer")

    def __init__(self, payload: bytes, future: asyncio.Future[bytes], deadline: float) -> None:
        self.payload = payload
        self.future = future
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None


class _Worker:
    """The server's end of one worker process: a socket and the evaluations in flight on it, in order.

    Several evaluations may be queued on one worker (up to the pool's depth) so that under load one
    wake-up and one system call carry many frames each way. The worker answers in order, so the head
    of `pending` is always the evaluation running now.
    """

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.pending: collections.deque[_Pending] = collections.deque()
        self.buffer = bytearray()
        self.outbox: list[bytes] = []  # frames queued this loop iteration, sent together
        self.dead = False
        #: Fires when the evaluation at the head of `pending` has run for a whole deadline.
        self.watchdog: asyncio.TimerHandle | None = None


class WorkerPoolEngine:
    """Embedded OPA across worker processes; implements the Engine protocol for one bundle."""

    def __init__(self, bundle: Bundle, config: EngineConfig = EngineConfig()) -> None:
        self._bundle = bundle
        self._config = config
        self._spec = json.dumps(
            {"entrypoint": config.entrypoint.strip("/").replace("/", "."),
             "modules": dict(bundle.modules), "data": bundle.data}
        ).encode()
        self._workers: list[_Worker] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def revision(self) -> str:
        return self._bundle.revision

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    async def start(self) -> None:
        """Start every worker; raise EngineError (and leave nothing running) if the bundle is refused."""
        self._loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self._config.worker_count())), return_exceptions=True
        )
        for r in results:
            if isinstance(r, _Worker):
                self._attach(r)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            first = errors[0]
            if isinstance(first, EngineError):
                raise first
            raise EngineError("start_failed", f"engine worker did not start: {first!r}")

    async def _spawn(self) -> _Worker:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env.setdefault("GOMAXPROCS", "1")  # one evaluation at a time per worker; leave cores to the others
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tollgate.engine._worker", str(child.fileno())],
                pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        try:
            parent.setblocking(False)
            await loop.sock_sendall(parent, _HEADER.pack(len(self._spec)) + self._spec)
            reply = await asyncio.wait_for(_read_frame(loop, parent), self._config.start_timeout)
        except BaseException as exc:
            proc.kill()
            parent.close()
            await loop.run_in_executor(None, proc.wait)
            if isinstance(exc, TimeoutError):
                raise EngineError("start_timeout", "engine worker did not load the bundle in time") from exc
            if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                raise EngineError("start_failed", f"engine worker exited while loading ({proc.poll()})") from exc
            raise
        doc = json.loads(reply)
        if "error" in doc:
            parent.close()
            await loop.run_in_executor(None, proc.wait)
            raise EngineError(str(doc["error"]["code"]), str(doc["error"]["message"]))
        return _Worker(proc, parent)

    def _attach(self, worker: _Worker) -> None:
        assert self._loop is not None
        self._workers.append(worker)
        self._loop.add_reader(worker.sock.fileno(), self._on_readable, worker)

    async def evaluate(self, input_json: bytes, *, timeout: float) -> object:
        if self._closed:
            raise EngineError("closed", "engine has been closed")
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        pending = _Pending(input_json, future, loop.time() + timeout)
        pending.timer = loop.call_at(pending.deadline, self._on_deadline, pending)
        self._dispatch(pending)
        try:
            raw = await future
        finally:
            pending.timer.cancel()
        return decode_envelope(raw)

    def _dispatch(self, pending: _Pending, exclude: _Worker | None = None) -> None:
        """Queue an evaluation on the least busy live worker, or hold it until one has room."""
        best: _Worker | None = None
        for w in self._workers:
            if not w.dead and w is not exclude and (best is None or len(w.pending) < len(best.pending)):
                best = w
        if best is None:
            # Every worker is being replaced; the deadline timer answers if none comes back in time.
            self._waiting.append(pending)
            return
        if len(best.pending) >= self._config.max_queue_per_worker:
            self._waiting.append(pending)
            return
        best.pending.append(pending)
        if not best.outbox:
            # One send per worker per loop iteration: waking another process costs far more than
            # copying a few more bytes, so everything dispatched in this iteration travels together.
            assert self._loop is not None
            self._loop.call_soon(self._flush, best)
        best.outbox.append(_HEADER.pack(len(pending.payload)))
        best.outbox.append(pending.payload)
        if len(best.pending) == 1:
            self._arm_watchdog(best)

    def _flush(self, worker: _Worker) -> None:
        if worker.dead or not worker.outbox:
            return
        data = b"".join(worker.outbox)
        worker.outbox.clear()
        try:
            worker.sock.sendall(data)  # frames are small and the worker drains its socket continuously
        except OSError as exc:
            self._retire(worker, why=f"socket error: {exc}")

    def _arm_watchdog(self, worker: _Worker) -> None:
        """The head of the worker's queue starts now. If it is still running after `hedge_after`, the
        requests behind it are sent to other workers too; if it is still running after a whole
        evaluation deadline, the worker is killed."""
        if worker.watchdog is not None:
            worker.watchdog.cancel()
            worker.watchdog = None
        if worker.pending and self._loop is not None:
            head = worker.pending[0]
            hedge = min(self._config.hedge_after, self._config.eval_timeout)
            worker.watchdog = self._loop.call_later(hedge, self._on_slow, worker, head)

    def _on_slow(self, worker: _Worker, head: _Pending) -> None:
        if worker.dead or not worker.pending or worker.pending[0] is not head or self._loop is None:
            return
        # The queued copies stay on this worker (its answers arrive in order), but they no longer
        # wait for it: duplicates go to the other workers, and the first answer wins.
        others = [w for w in self._workers if w is not worker and not w.dead]
        if others:
            for queued in list(worker.pending)[1:]:
                if not queued.future.done():
                    self._dispatch(_Pending(queued.payload, queued.future, queued.deadline), exclude=worker)
        remaining = self._config.eval_timeout - min(self._config.hedge_after, self._config.eval_timeout)
        worker.watchdog = self._loop.call_later(max(remaining, 0.0), self._on_stuck, worker, head)

    def _on_stuck(self, worker: _Worker, head: _Pending) -> None:
        if not worker.dead and worker.pending and worker.pending[0] is head:
            self._retire(worker, why="evaluation ran past its deadline", timed_out=head)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            chunk = worker.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._retire(worker, why=f"socket error: {exc}")
            return
        if not chunk:
            self._retire(worker, why=f"engine worker {worker.proc.pid} exited ({worker.proc.poll()})")
            return
        buf = worker.buffer
        buf += chunk
        offset = 0
        size = _HEADER.size
        while len(buf) - offset >= size:
            (length,) = _HEADER.unpack_from(buf, offset)
            if len(buf) - offset - size < length:
                break
            frame = bytes(buf[offset + size : offset + size + length])
            offset += size + length
            pending = worker.pending.popleft()
            if not pending.future.done():
                pending.future.set_result(frame)
        if offset:
            del buf[:offset]
            self._arm_watchdog(worker)
        self._drain_waiting()

    def _drain_waiting(self) -> None:
        while self._waiting:
            pending = self._waiting.popleft()
            if pending.future.done():
                continue
            before = len(self._waiting)
            self._dispatch(pending)
            if len(self._waiting) > before:  # went straight back: nobody can take more now
                return

    def _on_deadline(self, pending: _Pending) -> None:
        # The caller gets its answer now. If the evaluation was already sent, its result is dropped
        # when it arrives; the worker's watchdog decides whether the worker itself is stuck.
        if not pending.future.done():
            pending.future.set_exception(
                EvaluationTimeout("policy evaluation did not finish before its deadline"))

    def _retire(self, worker: _Worker, *, why: str, timed_out: _Pending | None = None) -> None:
        """Kill a worker, answer what it was running, re-queue what waited behind it, start a replacement."""
        if worker.dead:
            return
        worker.dead = True
        if worker.watchdog is not None:
            worker.watchdog.cancel()
        log.warning("engine: retiring worker %d (%s); starting a replacement", worker.proc.pid, why)
        assert self._loop is not None
        self._loop.remove_reader(worker.sock.fileno())
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()
        worker.sock.close()
        self._workers.remove(worker)
        self._loop.run_in_executor(None, worker.proc.wait)  # reap
        queued = list(worker.pending)
        worker.pending.clear()
        for i, pending in enumerate(queued):
            if pending.future.done():
                continue
            if pending is timed_out:
                pending.future.set_exception(
                    EvaluationTimeout("policy evaluation did not finish before its deadline"))
            elif i == 0:
                pending.future.set_exception(EngineError("worker_died", why))
            else:
                self._waiting.append(pending)
        if not self._closed:
            task = self._loop.create_task(self._respawn())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._drain_waiting()

    async def _respawn(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                worker = await self._spawn()
            except EngineError as exc:
                log.error("engine: replacement worker failed to start: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._closed:
                worker.proc.kill()
                worker.sock.close()
                return
            self._attach(worker)
            self._drain_waiting()
            return

    async def close(self) -> None:
        """Stop every worker. Evaluations still in flight fail with EngineError('closed')."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        loop = asyncio.get_running_loop()
        workers, self._workers = self._workers, []
        for w in workers:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(w.sock.fileno())
            w.sock.close()  # EOF ends the worker's loop
            for pending in w.pending:
                if not pending.future.done():
                    pending.future.set_exception(EngineError("closed", "engine has been closed"))
        for pending in self._waiting:
            if not pending.future.done():
                pending.future.set_exception(EngineError("closed", "engine has been closed"))
        self._waiting.clear()

        def reap(proc: subprocess.Popen[bytes]) -> None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        await asyncio.gather(*(loop.run_in_executor(None, reap, w.proc) for w in workers))


async def _read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    async def exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, n - len(buf))
            if not chunk:
                raise ConnectionError("engine worker closed its socket")
            buf += chunk
        return bytes(buf)

    (length,) = _HEADER.unpack(await exact(_HEADER.size))
    return await exact(length)
