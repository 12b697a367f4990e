"""The embedded engine as a pool of worker processes, so a runaway evaluation can be stopped.

The Go `rego` package cannot cancel an evaluation from the outside, and an in-process thread that runs
one past its deadline would keep burning a core (and memory) until it finishes. Each worker process
holds one OPA engine and evaluates one input at a time; the server queues inputs on the least busy
worker and sends everything queued in one loop iteration with one write.

Deadlines, per worker, on the evaluation it is running (the head of its queue):
- at half the deadline, the requests queued behind it are also sent to idle workers (first answer wins);
- at the deadline, its caller gets EvaluationTimeout (a DENY). If the worker is burning CPU on it, the
  worker is killed and replaced in the background; if the machine is merely too busy to run it, the
  worker is left to finish and checked again, since killing it would only shrink the pool under load.
A request that waits `max_queue_wait` without reaching a worker also gets EvaluationTimeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tollgate.bundle import Bundle
from tollgate.engine._base import (
    EngineError,
    Evaluation,
    EvaluationTimeout,
    decode_envelope,
    decode_evaluation,
)
from tollgate.engine._frames import MAX_FRAME, FrameError, FrameReader, header
from tollgate.net import Backoff, Jitter

log = logging.getLogger(__name__)
_RECV_SIZE = 65536  # below malloc's mmap threshold: no page-fault storm per read
#: Between attempts to replace a worker that failed to start: soon at first, then no more than every 10 s.
_RESPAWN_BACKOFF = Backoff(0.1, 10.0, jitter=Jitter.EQUAL)


@dataclass(frozen=True)
class EngineConfig:
    """How the embedded engine runs."""

    #: The document evaluated for every request, as a path under data.
    entrypoint: str = "tollgate/decision"
    #: The decision-log mask rule, as a path under data, evaluated with the entrypoint when a module of the
    #: bundle declares its package (so a bundle without one pays nothing); empty to never evaluate it.
    mask: str = "tollgate/log/mask"
    #: Worker processes, each with its own OPA engine; 0 means one per CPU.
    workers: int = 0
    #: Deadline for one evaluation, in seconds, from the moment a worker starts it.
    eval_timeout: float = 0.050
    #: Longest a request may wait for a worker before it is answered with EvaluationTimeout, in seconds.
    max_queue_wait: float = 1.0
    #: How long a new worker may take to load and compile the bundle, in seconds.
    start_timeout: float = 60.0
    #: Evaluations queued on one worker at once; deeper queues batch more work per wake-up.
    max_queue_per_worker: int = 32
    #: A worker still on one evaluation this long after its deadline is killed even if it seems starved.
    kill_after: float = 2.0

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)


class _Pending:
    """One evaluation waiting for, or sent to, a worker."""

    __slots__ = ("future", "payload", "timer")

    def __init__(self, payload: bytes, future: asyncio.Future[bytes]) -> None:
        self.payload = payload
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class _Worker:
    """The server's end of one worker process: a socket and the evaluations queued on it, in order.

    The worker answers in order, so the head of `pending` is the evaluation it is running now.
    """

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.pending: collections.deque[_Pending] = collections.deque()
        self.reader = FrameReader()
        self.outbox: list[bytes] = []  # frames queued this loop iteration, sent together
        self.dead = False
        self.slow = False  # the head has run past half its deadline: send new work elsewhere
        self.head_started = 0.0
        self.cpu_mark: tuple[int | None, float] = (None, 0.0)  # (CPU ns, loop time) at the last check
        self.watchdog: asyncio.TimerHandle | None = None


class WorkerPoolEngine:
    """Embedded OPA across worker processes; implements the Engine protocol for one bundle."""

    def __init__(self, bundle: Bundle, config: EngineConfig = EngineConfig()) -> None:
        self._bundle = bundle
        self._config = config
        mask = config.mask.strip("/").replace("/", ".")
        #: Whether the workers evaluate the mask rule (and answer [decision, mask]).
        self.masks = bool(mask) and may_define(bundle.modules, mask)
        self._spec = json.dumps(
            {"entrypoint": config.entrypoint.strip("/").replace("/", "."),
             "mask": mask if self.masks else None,
             "modules": dict(bundle.modules), "data": bundle.data}
        ).encode()
        self._workers: list[_Worker] = []
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._evaluating = 0  # evaluate() calls not yet returned
        self._idle: asyncio.Event | None = None  # set when _evaluating drops to 0 during a graceful close

    @property
    def revision(self) -> str:
        return self._bundle.revision

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def workers(self) -> int:
        """Worker processes running now (a retired one is gone until its replacement starts)."""
        return len(self._workers)

    @property
    def busy(self) -> int:
        """Workers with an evaluation in hand: busy / workers is how saturated the pool is."""
        return sum(1 for w in list(self._workers) if w.pending)  # a copy: metrics read it from their thread

    async def start(self) -> None:
        """Start every worker; raise EngineError (and leave nothing running) if the bundle is refused."""
        self._loop = asyncio.get_running_loop()
        if len(self._spec) > MAX_FRAME:
            raise EngineError("bundle_too_large", f"the bundle is {len(self._spec)} bytes as JSON, over the "
                              f"{MAX_FRAME}-byte limit of the engine workers' protocol (hint: split its data)")
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
            # The header, then the spec as it is: joining them would copy the whole bundle once per worker.
            await loop.sock_sendall(parent, header(len(self._spec)))
            await loop.sock_sendall(parent, self._spec)
            reply = await asyncio.wait_for(_read_reply(loop, parent), self._config.start_timeout)
        except BaseException as exc:
            proc.kill()
            parent.close()
            await loop.run_in_executor(None, proc.wait)
            if isinstance(exc, TimeoutError):
                raise EngineError("start_timeout", "engine worker did not load the bundle in time") from exc
            if isinstance(exc, FrameError):
                raise EngineError("start_failed", f"engine worker answered the bundle with a bad frame ({exc})"
                                  ) from exc
            if isinstance(exc, ConnectionError):
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

    async def evaluate(self, input_json: bytes) -> object:
        raw = await self._evaluate_raw(input_json)
        if not self.masks:
            return decode_envelope(raw)
        value = decode_evaluation(raw).value
        if isinstance(value, EngineError):
            raise value
        return value

    async def evaluate_with_mask(self, input_json: bytes) -> Evaluation:
        raw = await self._evaluate_raw(input_json)
        if not self.masks:
            try:
                return Evaluation(decode_envelope(raw))
            except EngineError as exc:
                return Evaluation(exc)
        return decode_evaluation(raw)

    async def _evaluate_raw(self, input_json: bytes) -> bytes:
        if self._closed:
            raise EngineError("closed", "engine has been closed")
        loop = self._loop or asyncio.get_running_loop()
        pending = _Pending(input_json, loop.create_future())
        config = self._config
        pending.timer = loop.call_later(config.max_queue_wait + config.eval_timeout, self._on_wait_timeout, pending)
        self._evaluating += 1
        try:
            self._dispatch(pending)
            raw = await pending.future
        finally:
            pending.timer.cancel()
            self._evaluating -= 1
            if not self._evaluating and self._idle is not None:
                self._idle.set()
        return raw

    # -- placing work ------------------------------------------------------------------------------

    def _dispatch(self, pending: _Pending, *, idle_only: bool = False, exclude: _Worker | None = None) -> bool:
        """Queue an evaluation on the least busy healthy worker; hold it when none has room.

        With idle_only, only a worker with nothing queued will do, and nothing is held (for hedging).
        """
        best: _Worker | None = None
        for w in self._workers:
            if w.dead or w is exclude or (idle_only and (w.pending or w.slow)):
                continue
            if best is None or (w.slow, len(w.pending)) < (best.slow, len(best.pending)):
                best = w
        if best is None or len(best.pending) >= self._config.max_queue_per_worker:
            if not idle_only:
                self._waiting.append(pending)
            return False
        best.pending.append(pending)
        if not best.outbox:
            # One send per worker per loop iteration: waking another process costs far more than
            # copying a few more bytes, so everything dispatched in this iteration travels together.
            assert self._loop is not None
            self._loop.call_soon(self._flush, best)
        best.outbox.append(header(len(pending.payload)))
        best.outbox.append(pending.payload)
        if len(best.pending) == 1:
            self._start_head(best)
        return True

    def _flush(self, worker: _Worker) -> None:
        if worker.dead or not worker.outbox:
            return
        data = b"".join(worker.outbox)
        worker.outbox.clear()
        try:
            worker.sock.sendall(data)  # frames are small and the worker drains its socket continuously
        except OSError as exc:
            self._retire(worker, why=f"socket error: {exc}")

    def _drain_waiting(self) -> None:
        while self._waiting:
            pending = self._waiting.popleft()
            if pending.future.done():
                continue
            if not self._dispatch(pending):
                # It went back to the end of the queue; put it in front again and stop for now.
                self._waiting.rotate(1)
                return

    def _hedge(self, worker: _Worker) -> None:
        """Send copies of what waits behind a slow head to idle workers; the first answer wins."""
        for queued in list(worker.pending)[1:]:
            if not queued.future.done():
                if not self._dispatch(_Pending(queued.payload, queued.future), idle_only=True, exclude=worker):
                    return

    # -- answers -----------------------------------------------------------------------------------

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
        try:
            frames = worker.reader.feed(chunk)
        except FrameError as exc:
            self._retire(worker, why=f"engine worker {worker.proc.pid}: {exc}")
            return
        for frame in frames:
            pending = worker.pending.popleft()
            if not pending.future.done():  # a copy may have answered first, or the deadline passed
                pending.future.set_result(frame)
        if frames:
            self._start_head(worker)
        self._drain_waiting()

    # -- deadlines ---------------------------------------------------------------------------------

    def _start_head(self, worker: _Worker) -> None:
        """The head of the worker's queue starts now: watch it."""
        if worker.watchdog is not None:
            worker.watchdog.cancel()
            worker.watchdog = None
        worker.slow = False
        if worker.pending and self._loop is not None:
            worker.head_started = self._loop.time()
            worker.watchdog = self._loop.call_later(
                self._config.eval_timeout / 2, self._on_slow, worker, worker.pending[0])

    def _on_slow(self, worker: _Worker, head: _Pending) -> None:
        if worker.dead or not worker.pending or worker.pending[0] is not head or self._loop is None:
            return
        worker.slow = True
        self._hedge(worker)
        worker.cpu_mark = (_cpu_ns(worker.proc.pid), self._loop.time())
        remaining = worker.head_started + self._config.eval_timeout - self._loop.time()
        worker.watchdog = self._loop.call_later(max(remaining, 0.0), self._on_overdue, worker, head)

    def _on_overdue(self, worker: _Worker, head: _Pending) -> None:
        if worker.dead or not worker.pending or worker.pending[0] is not head or self._loop is None:
            return
        if not head.future.done():
            ms = self._config.eval_timeout * 1000
            head.future.set_exception(EvaluationTimeout(f"policy evaluation did not finish within {ms:g} ms"))
        now = self._loop.time()
        cpu_before, since = worker.cpu_mark
        cpu_now = _cpu_ns(worker.proc.pid)
        burning = cpu_before is None or cpu_now is None or (cpu_now - cpu_before) >= 0.5e9 * (now - since)
        if burning or now - worker.head_started >= self._config.eval_timeout + self._config.kill_after:
            self._retire(worker, why="evaluation ran past its deadline")
            return
        # Starved rather than stuck: the machine is too busy to run it. Let it finish, look again later.
        log.debug("engine: worker %d is slow but not burning CPU; not killing it", worker.proc.pid)
        self._hedge(worker)
        worker.cpu_mark = (cpu_now, now)
        worker.watchdog = self._loop.call_later(self._config.eval_timeout, self._on_overdue, worker, head)

    def _on_wait_timeout(self, pending: _Pending) -> None:
        if not pending.future.done():
            pending.future.set_exception(EvaluationTimeout(
                f"no engine worker finished the request within {self._config.max_queue_wait * 1000:g} ms "
                "of queueing plus the evaluation deadline (overloaded)"))

    # -- worker life cycle -------------------------------------------------------------------------

    def _retire(self, worker: _Worker, *, why: str) -> None:
        """Kill a worker, fail what it was running, re-queue what waited behind it, start a replacement."""
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
            if i == 0:
                pending.future.set_exception(EngineError("worker_died", why))
            else:
                self._waiting.append(pending)
        if not self._closed:
            task = self._loop.create_task(self._respawn())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._drain_waiting()

    async def _respawn(self) -> None:
        failures = 0
        while not self._closed:
            try:
                worker = await self._spawn()
            except EngineError as exc:
                delay = _RESPAWN_BACKOFF.delay(failures)
                failures += 1
                log.error("engine: replacement worker failed to start: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if self._closed:
                worker.proc.kill()
                worker.sock.close()
                return
            self._attach(worker)
            self._drain_waiting()
            return

    async def close(self, *, drain: float = 0.0) -> None:
        """Stop every worker. With drain, first wait up to drain seconds for the evaluations in flight to
        finish (new ones are still accepted meanwhile: a caller that picked this engine before it was
        replaced gets its answer); whatever is still in flight after that fails with EngineError('closed')."""
        if drain > 0 and self._evaluating and not self._closed:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain)
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


async def _read_reply(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """A new worker's answer to the bundle spec (the first frame it sends, and the only one before a request)."""
    reader = FrameReader()
    while chunk := await loop.sock_recv(sock, _RECV_SIZE):
        if frames := reader.feed(chunk):
            return frames[0]
    reader.finish()
    raise ConnectionError("engine worker closed its socket")


def may_define(modules: Mapping[str, str], document: str) -> bool:
    """Whether a module may define `document` (dot-separated, e.g. "tollgate.log.mask"): one declares its
    package, or a package above it and mentions the rest (`package tollgate` with `log.mask contains ...`).
    A false yes costs an evaluation that comes back undefined; a false no would skip the rule."""
    parts = document.split(".")
    for depth in range(1, len(parts)):
        package, rest = ".".join(parts[:depth]), ".".join(parts[depth:])
        declared = re.compile(rf"^[ \t]*package[ \t]+{re.escape(package)}[ \t]*(#.*)?$", re.MULTILINE)
        mentioned = re.compile(rf"(?<![\w.]){re.escape(rest)}\b" if depth < len(parts) - 1 else r"")
        if any(declared.search(source) and mentioned.search(source) for source in modules.values()):
            return True
    return False


def _cpu_ns(pid: int) -> int | None:
    """CPU time all threads of a process have used, in ns (Linux schedstat), or None if unknown."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir())
    except (OSError, ValueError, IndexError):
        return None
