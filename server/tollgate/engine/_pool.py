"""The embedded engine as a pool of worker processes, so a runaway evaluation can be stopped.

The Go `rego` package cannot cancel an evaluation from the outside, and an in-process thread that runs
one past its deadline would keep burning a core (and memory) until it finishes. Each worker process
holds one OPA engine and evaluates one input at a time; the server queues inputs on the least busy
worker and sends everything queued in one loop iteration together. Writes are flow-controlled: what a socket
cannot take now waits in the pool until the worker reads on, so a large request waits, it never fails a worker.

The deadline counts the CPU time the worker spends on the evaluation it is running (the head of its queue), from
the moment its last byte is written and the worker is free for it; waiting, to be written or to be scheduled by a
busy machine, is not evaluation (tollgate.engine._watch measures it):
- at half the deadline in wall time, the requests queued behind it are also sent to idle workers (first answer
  wins), and new work goes elsewhere;
- at the deadline in wall time, the worker's process CPU time is read: under the deadline (a starved or stopped
  worker) it is left to finish and looked at again once it could have used the rest; at or over it, its caller
  gets EvaluationTimeout (a DENY) and the worker is killed and replaced in the background (it is burning);
- `kill_after` past the deadline in wall time, a worker still on it is killed and its caller gets the timeout
  anyway (stopped or wedged).
A request whose evaluation has not started `max_queue_wait` plus its deadline after it was asked gets
EvaluationTimeout too, as overload; waiting hedges nothing and retires no worker.

Large inputs (over `large_input` bytes) may hold all workers but one; the rest wait apart. So a caller looping
requests at the size limit slows only large requests: a small one always finds a worker with no large one ahead.
Replacements are rate-limited: `restart_budget` per `restart_window` start at once, later ones wait a backoff (up
to 10 s), so requests that kill workers cannot make a fork loop. Each is reported to `EngineConfig.on_restart`.
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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tollgate.bundle import Bundle
from tollgate.engine._base import (
    EngineError,
    Evaluation,
    EvaluationTimeout,
    decode_envelope,
    decode_evaluation,
)
from tollgate.engine._frames import HEADER_SIZE, MAX_FRAME, FrameError, FrameReader, header
from tollgate.engine._watch import HeadWatch, Sweep, expire_waiting, sweep_period
from tollgate.engine._worker import worker_env
from tollgate.net import Backoff, Jitter

log = logging.getLogger(__name__)
_RECV_SIZE = 65536  # below malloc's mmap threshold: no page-fault storm per read
#: Between attempts to replace a worker that failed to start: soon at first, then no more than every 10 s.
_RESPAWN_BACKOFF = Backoff(0.1, 10.0, jitter=Jitter.EQUAL)
#: Why a worker was retired and replaced (the label of the restarts metric): its evaluation ran past the
#: deadline, it exited or crashed, its socket failed, or it broke the frame protocol.
RESTART_REASONS = ("deadline", "exited", "socket_error", "protocol")


def _ignore_restart(reason: str) -> None:
    """The default restart observer: nothing is counted."""


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
    #: Deadline for one evaluation, in seconds of the worker's CPU time, from the moment a worker starts it.
    eval_timeout: float = 0.050
    #: Added to the deadline per MiB of input, in seconds: reading an input and a policy that walks its strings
    #: cost time in proportion to its size (1 MiB, the default request limit, took 165-423 ms with the default
    #: library and its mask rule on a busy 2-core machine; 16-69 ms with a one-rule policy).
    input_allowance: float = 0.5
    #: Inputs larger than this many bytes are large: they may occupy all workers but one.
    large_input: int = 64 * 1024
    #: Longest a request may wait for its evaluation to start, in seconds, beyond its own deadline (what is
    #: queued ahead of it may take as long), before it is answered with EvaluationTimeout (overloaded).
    max_queue_wait: float = 1.0
    #: How long a new worker may take to load and compile the bundle, in seconds.
    start_timeout: float = 60.0
    #: Evaluations queued on one worker at once; deeper queues batch more work per wake-up.
    max_queue_per_worker: int = 32
    #: A worker still on one evaluation this long (wall time) after its deadline is killed, and its caller
    #: answered EvaluationTimeout, whatever CPU it used: it is stopped or wedged.
    kill_after: float = 2.0
    #: Replacements that start at once within restart_window seconds; past that each waits a backoff.
    restart_budget: int = 10
    #: Seconds over which restart_budget is counted.
    restart_window: float = 60.0
    #: Called on the event loop with the reason (one of RESTART_REASONS) each time a worker is retired.
    on_restart: Callable[[str], None] = field(default=_ignore_restart, compare=False)

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    def deadline(self, input_bytes: int) -> float:
        """Seconds an evaluation of an input this large may take: eval_timeout plus its input allowance."""
        return self.eval_timeout + self.input_allowance * input_bytes / (1 << 20)


class _Pending:
    """One evaluation waiting for, or sent to, a worker."""

    __slots__ = ("frame_end", "future", "payload", "queued_at", "sent", "started", "twin", "wait_until")

    def __init__(self, payload: bytes, future: asyncio.Future[bytes], queued_at: float, wait_until: float,
                 twin: _Pending | None = None) -> None:
        self.payload = payload
        self.future = future
        self.queued_at = queued_at  # loop time the request was asked
        self.wait_until = wait_until  # loop time by which its evaluation must start, or it is overloaded
        self.frame_end = 0  # the worker's byte count once its frame is written
        self.sent = False  # its last byte is in the worker's socket: its deadline may start
        self.started = False  # it is (or was) a worker's head: it waits no more
        self.twin = twin  # the request a hedged copy was made from: it starts when its copy does


class _Worker:
    """The server's end of one worker process: a socket and the evaluations queued on it, in order.

    The worker answers in order, so the head of `pending` is the evaluation it is running now.
    """

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.pending: collections.deque[_Pending] = collections.deque()
        self.reader = FrameReader(marked=True)
        self.outbox = bytearray()  # frames not yet written to the socket, in order
        self.flushing = False  # a flush is scheduled, or the loop watches the socket for room
        self.queued_bytes = 0  # bytes ever put in the outbox
        self.written_bytes = 0  # of them, written to the socket
        self.unsent: collections.deque[_Pending] = collections.deque()  # queued, frame not fully written yet
        self.large = 0  # large inputs among pending
        self.dead = False
        self.head = HeadWatch()  # the deadline watch on the head, while it runs
        self.cpu_mark: int | None = None  # the worker's CPU ns when it finished its last answer


class WorkerPoolEngine:
    """Embedded OPA across worker processes; implements the Engine protocol for one bundle."""

    def __init__(self, bundle: Bundle, config: EngineConfig = EngineConfig()) -> None:
        self._bundle = bundle
        self._config = config
        mask = config.mask.strip("/").replace("/", ".")
        #: Whether the workers evaluate the mask rule (and answer [decision, mask]).
        self.masks = bool(mask) and may_define(bundle.modules, mask)
        # What each worker is sent: the spec, then the data as the bundle keeps it (no second copy here).
        self._spec = json.dumps({"entrypoint": config.entrypoint.strip("/").replace("/", "."),
                                 "mask": mask if self.masks else None, "modules": dict(bundle.modules)}).encode()
        self._workers: list[_Worker] = []
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._waiting_large: collections.deque[_Pending] = collections.deque()  # large inputs wait apart
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._evaluating = 0  # evaluate() calls not yet returned
        self._restarts: collections.deque[float] = collections.deque()  # monotonic times of recent replacements
        self._idle: asyncio.Event | None = None  # set when _evaluating drops to 0 during a graceful close
        self._sweep: Sweep | None = None  # the deadline watch, while evaluations are in flight

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
        self._sweep = Sweep(self._loop, sweep_period(self._config.eval_timeout), self._on_sweep)
        if (size := max(len(self._spec), len(self._bundle.data_json))) > MAX_FRAME:
            raise EngineError("bundle_too_large", f"the bundle is {size} bytes as JSON, over the "
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
        env = worker_env(os.environ)
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
            # Each header, then its payload as it is: joining them would copy the whole data once per worker.
            for payload in (self._spec, self._bundle.data_json):
                await loop.sock_sendall(parent, header(len(payload)))
                await loop.sock_sendall(parent, payload)
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
        worker = _Worker(proc, parent)
        worker.cpu_mark = doc.get("cpu_ns")
        return worker

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
        wait = self._config.max_queue_wait + self._config.deadline(len(input_json))
        pending = _Pending(input_json, loop.create_future(), now := loop.time(), now + wait)
        if self._sweep is not None:
            self._sweep.arm()
        self._evaluating += 1
        try:
            self._dispatch(pending)
            raw = await pending.future
        finally:
            self._evaluating -= 1
            if not self._evaluating and self._idle is not None:
                self._idle.set()
        return raw

    # -- placing work ------------------------------------------------------------------------------

    def _dispatch(self, pending: _Pending, *, idle_only: bool = False, exclude: _Worker | None = None) -> bool:
        """Queue an evaluation on the least busy healthy worker; hold it when none has room.

        With idle_only, only a worker with nothing queued will do, and nothing is held (for hedging). A large
        input goes only where large inputs may be (see the module docstring); a small one prefers a worker with
        none queued.
        """
        large = len(pending.payload) > self._config.large_input
        workers = self._workers
        # Workers that may take a large input: those holding some already, and others while one stays free of them.
        closed_lanes = large and len(workers) > 1 and sum(1 for w in workers if w.large and not w.dead) >= len(
            workers) - 1
        best: _Worker | None = None
        best_key = 0
        for w in workers:
            if w.dead or w is exclude or (idle_only and (w.pending or w.head.slow)):
                continue
            if closed_lanes and not w.large:
                continue
            # Least busy first: not slow, then holding no large input, then the shortest queue (one int to compare).
            key = w.head.slow << 41 | (w.large > 0) << 40 | len(w.pending)
            if best is None or key < best_key:
                best, best_key = w, key
                if not key:
                    break  # an idle worker: none is better
        if best is None or len(best.pending) >= self._config.max_queue_per_worker:
            if not idle_only:
                (self._waiting_large if large else self._waiting).append(pending)
            return False
        best.pending.append(pending)
        best.large += large
        self._enqueue(best, pending)
        if len(best.pending) == 1:
            self._start_head(best)
        return True

    def _enqueue(self, worker: _Worker, pending: _Pending) -> None:
        """Put a frame in the worker's outbox; it is written when the loop next gets to it."""
        if not worker.flushing:
            # One send per worker per loop iteration: waking another process costs far more than
            # copying a few more bytes, so everything dispatched in this iteration travels together.
            assert self._loop is not None
            worker.flushing = True
            self._loop.call_soon(self._flush, worker)
        worker.outbox += header(len(pending.payload))
        worker.outbox += pending.payload
        worker.queued_bytes += HEADER_SIZE + len(pending.payload)
        pending.frame_end, pending.sent = worker.queued_bytes, False
        worker.unsent.append(pending)

    def _flush(self, worker: _Worker) -> None:
        """Write what the socket takes now; watch it for room while anything is left (flow control)."""
        if worker.dead:
            return
        assert self._loop is not None
        written = 0
        try:
            with memoryview(worker.outbox) as view:
                while written < len(view):
                    written += worker.sock.send(view[written:])
        except (BlockingIOError, InterruptedError):
            pass  # the socket is full: the worker reads on as it evaluates, and the loop calls again
        except OSError as exc:
            self._retire(worker, why=f"socket error: {exc}", reason="socket_error")
            return
        del worker.outbox[:written]
        worker.written_bytes += written
        self._mark_sent(worker)
        fd = worker.sock.fileno()
        if worker.outbox:
            self._loop.add_writer(fd, self._flush, worker)  # replaces a registration already there
            return
        self._loop.remove_writer(fd)
        worker.flushing = False

    def _mark_sent(self, worker: _Worker) -> None:
        """Frames whose last byte is now written are sent; a head among them starts its deadline now."""
        head_sent = False
        while worker.unsent and worker.unsent[0].frame_end <= worker.written_bytes:
            pending = worker.unsent.popleft()
            pending.sent = True
            head_sent = head_sent or (bool(worker.pending) and worker.pending[0] is pending)
        if head_sent:
            self._start_head(worker)

    def _drain_waiting(self) -> None:
        for waiting in (self._waiting, self._waiting_large):
            while waiting:
                pending = waiting.popleft()
                if pending.future.done():
                    continue
                if not self._dispatch(pending):
                    # It went back to the end of its queue; put it in front again and stop for now.
                    waiting.rotate(1)
                    break

    def _hedge(self, worker: _Worker) -> None:
        """Send copies of what waits behind a slow head to idle workers; the first answer wins."""
        for queued in list(worker.pending)[1:]:
            if not queued.future.done():
                copy = _Pending(queued.payload, queued.future, queued.queued_at, queued.wait_until, twin=queued)
                if not self._dispatch(copy, idle_only=True, exclude=worker):
                    return

    # -- answers -----------------------------------------------------------------------------------

    def _on_readable(self, worker: _Worker) -> None:
        try:
            chunk = worker.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._retire(worker, why=f"socket error: {exc}", reason="socket_error")
            return
        if not chunk:
            self._retire(worker, why=f"engine worker {worker.proc.pid} exited ({worker.proc.poll()})",
                         reason="exited")
            return
        try:
            frames = worker.reader.feed(chunk)
        except FrameError as exc:
            self._retire(worker, why=f"engine worker {worker.proc.pid}: {exc}", reason="protocol")
            return
        for frame in frames:
            pending = worker.pending.popleft()
            worker.large -= len(pending.payload) > self._config.large_input
            if not pending.future.done():  # a copy may have answered first, or the deadline passed
                pending.future.set_result(frame)
        if frames:
            worker.cpu_mark = worker.reader.mark
            self._start_head(worker)
        self._drain_waiting()

    # -- deadlines ---------------------------------------------------------------------------------

    def _start_head(self, worker: _Worker) -> None:
        """The head of the worker's queue starts now, if its frame is written: the sweep watches it from here,
        and from the CPU mark of the worker's last answer. (One still being written starts when its last byte
        is: _mark_sent calls again.)"""
        if worker.pending and worker.pending[0].sent and self._loop is not None:
            head = worker.pending[0]
            twin: _Pending | None = head
            while twin is not None:  # it, and the request it is a hedged copy of, wait no more
                twin.started, twin = True, twin.twin
            worker.head.start(self._loop.time(), worker.cpu_mark, self._config.deadline(len(head.payload)))
        else:
            worker.head.stop()

    def _on_sweep(self, now: float) -> bool:
        """The periodic deadline watch: every running head, then every request still waiting. Whether to
        sweep again (while any evaluation is in flight)."""
        for worker in list(self._workers):
            if worker.head.due(now):
                overdue = worker.head.look(now, worker.proc.pid, self._config.kill_after)
                if overdue is None:
                    self._hedge(worker)  # slow, or starved rather than stuck: let it finish
                    continue
                head = worker.pending[0]
                if not head.future.done():
                    head.future.set_exception(EvaluationTimeout(overdue))
                self._retire(worker, why=overdue, reason="deadline")
        self._expire_waiting(now)
        return bool(self._evaluating) and not self._closed

    def _expire_waiting(self, now: float) -> None:
        """Requests whose evaluation has not started in time (see EngineConfig.max_queue_wait) are answered
        overloaded."""
        for waiting in (self._waiting, self._waiting_large):
            expire_waiting(waiting, now)
        for worker in self._workers:
            expire_waiting(worker.pending, now, in_order=False)

    # -- worker life cycle -------------------------------------------------------------------------

    def _retire(self, worker: _Worker, *, why: str, reason: str) -> None:
        """Kill a worker, fail what it was running, re-queue what waited behind it, start a replacement."""
        if worker.dead:
            return
        worker.dead = True
        worker.head.stop()
        log.warning("engine: retiring worker %d (%s); starting a replacement", worker.proc.pid, why)
        self._config.on_restart(reason)
        assert self._loop is not None
        self._loop.remove_reader(worker.sock.fileno())
        self._loop.remove_writer(worker.sock.fileno())
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
                large = len(pending.payload) > self._config.large_input
                (self._waiting_large if large else self._waiting).append(pending)
        if not self._closed:
            task = self._loop.create_task(self._respawn(self._restart_delay()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._drain_waiting()

    def _restart_delay(self) -> float:
        """Seconds the next replacement waits: none within the budget, then a growing backoff."""
        now, window = time.monotonic(), self._config.restart_window
        while self._restarts and self._restarts[0] <= now - window:
            self._restarts.popleft()
        self._restarts.append(now)
        excess = len(self._restarts) - self._config.restart_budget
        if excess <= 0:
            return 0.0
        delay = _RESPAWN_BACKOFF.delay(excess - 1)
        log.warning("engine: %d worker replacements in the last %g s (budget %d); the next one waits %.1f s",
                    len(self._restarts), window, self._config.restart_budget, delay)
        return delay

    async def _respawn(self, delay: float = 0.0) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
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
        if self._sweep is not None:
            self._sweep.cancel()
        for task in list(self._tasks):
            task.cancel()
        loop = asyncio.get_running_loop()
        workers, self._workers = self._workers, []
        for w in workers:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(w.sock.fileno())
                loop.remove_writer(w.sock.fileno())
            w.sock.close()  # EOF ends the worker's loop
            for pending in w.pending:
                if not pending.future.done():
                    pending.future.set_exception(EngineError("closed", "engine has been closed"))
        for pending in (*self._waiting, *self._waiting_large):
            if not pending.future.done():
                pending.future.set_exception(EngineError("closed", "engine has been closed"))
        self._waiting.clear()
        self._waiting_large.clear()

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

