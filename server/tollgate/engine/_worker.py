"""An engine worker process: holds one embedded OPA engine and answers evaluations over a socket.

Started by the pool with `python -m tollgate.engine._worker FD`. Frames on the socket are
tollgate.engine._frames' (a 4-byte big-endian length and a payload). The first two carry the bundle: its spec
(`{"entrypoint", "mask", "modules"}`), then its data document as JSON, which goes to the bridge as it is (parsing
it in Python first would cost this process the data's objects, ~80 MiB for 10,000 agent manifests, for nothing).
The worker compiles the bundle, prepares the one query it answers with (each prepared query holds a copy of the
data in the bridge: see EmbeddedOpa.prepare) and answers `{"ok": true, "cpu_ns": N}` (its process CPU time then)
or `{"error": {...}}`. Every later request is an input document as JSON, answered with
the OPA bridge's raw result envelope in a marked frame, led by the worker's process CPU time when the evaluation
finished: the pool's deadline counts the CPU an evaluation used, not the time it waited to run. The answers to
frames that arrived together are sent together, but never later than _FLUSH_NS of CPU after the last mark sent.
When the bundle spec names a `mask` document (the decision-log mask rule), both are answered in the same call
(masking never costs a second round trip): normally from one query, whose envelope binds `decision` and `mask`
to `[value]` or `[]` (undefined); if that query fails, from each document evaluated alone, as
`[DECISION ENVELOPE, MASK ENVELOPE]`, so an error in the mask rule does not take the decision with it. The worker
exits when the socket closes or its parent dies.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tollgate.engine._frames import FrameError, FrameReader, encode, marked_header

if TYPE_CHECKING:
    from tollgate.engine._opa import EmbeddedOpa

_RECV_SIZE = 65536  # below malloc's mmap threshold
#: CPU time after the last answer sent past which the answers in hand go out before the next evaluation: the pool
#: takes the last mark it has as the start of the evaluation it watches, so this bounds how much CPU of earlier
#: evaluations it can count against a later one (and how long a finished answer can wait for its batch).
_FLUSH_NS = 2_000_000


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a worker is started with: the server's, and GOMAXPROCS=1 unless it sets one (one
    evaluation at a time per worker; leave cores to the others).

    GOGC and GOMEMLIMIT are Go's defaults unless the server's environment sets them, on purpose. A worker's live
    Go heap is the bundle's data twice (the bridge's own map and its prepared query's store: ~170 MB for 10,000
    agent manifests, ~12 MB for 10), and GOGC=100 lets the heap reach twice the live heap before a collection,
    so a worker peaks at about twice its data. Each cycle marks that live heap: with 10,000 manifests the
    collector cost ~40 µs of the one-rule policy's ~190 µs per answer (194 against 151 µs with GOGC=off, 15,000
    answers; nothing measurable with 10 manifests), and halving that takes doubling GOGC, another whole live
    heap of memory per worker: memory stays bounded by default, at that price. GOMEMLIMIT bounds the heap softly
    and is for an operator who knows the bundle: set below the live heap, it would make a worker collect
    continuously.
    """
    env = dict(environ)
    env.setdefault("GOMAXPROCS", "1")
    return env


def _die_with_parent() -> None:
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the closed socket still ends the loop
        pass


def _bundle_frames(sock: socket.socket, reader: FrameReader) -> list[bytes] | None:
    """The bundle's spec and data frames; None when the pool closed the socket before sending both."""
    frames: list[bytes] = []
    while len(frames) < 2 and (chunk := sock.recv(_RECV_SIZE)):
        frames += reader.feed(chunk)  # the pool sends nothing else before the worker answers these
    if len(frames) < 2:
        reader.finish()
        return None
    return frames


def _with_mask(engine: EmbeddedOpa, entrypoint: str, mask: str) -> Callable[[bytes, bytes], bytes]:
    """An evaluation of the entrypoint and the mask rule together (see the module docstring)."""
    # One query parses the input once; the comprehensions keep an undefined document from making the
    # whole query undefined.
    query = f"decision := [x | x := {_ref(entrypoint)}]; mask := [x | x := {_ref(mask)}]".encode()
    # Prepared now (tens of ms, more on a busy machine), or every new worker's first request would run into the
    # deadline.
    engine.prepare_query(query)  # the only query prepared: the fallback below prepares its two when first needed
    query_raw, evaluate_raw, mask_path = engine.query_raw, engine.evaluate_raw, mask.encode()

    def evaluate(path: bytes, input_json: bytes) -> bytes:
        answer = query_raw(query, input_json)
        if not answer.startswith(b'{"error"'):
            return answer
        return b"[" + evaluate_raw(path, input_json) + b"," + evaluate_raw(mask_path, input_json) + b"]"

    return evaluate


def _ref(path: str) -> str:
    """data.<path> (dot-separated) as a Rego reference that any segment can be spelled in: data["a"]["b-c"]."""
    return "data" + "".join(f"[{json.dumps(part)}]" for part in path.split("."))


def main() -> int:
    _die_with_parent()
    # The server owns shutdown, and drains its in-flight evaluations through these workers first: Ctrl-C, and
    # a SIGTERM sent to the whole group (systemd's control-group kill, `timeout`, `kill -- -PGID`), reach the
    # workers too. A worker ends when the server closes its socket, or dies with it (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    reader = FrameReader()
    try:
        frames = _bundle_frames(sock, reader)
    except FrameError as exc:
        print(f"tollgate engine worker: {exc}", file=sys.stderr)
        return 1
    if frames is None:
        return 0
    from tollgate.engine._base import EngineError
    from tollgate.engine._opa import EmbeddedOpa

    spec = json.loads(frames[0])
    path = spec["entrypoint"].encode()
    mask_path: str | None = spec.get("mask") or None
    try:
        engine = EmbeddedOpa(spec["modules"], frames.pop())
        del frames, spec  # the bridge holds the data now
        # A broken bundle is refused at load time, not on a live request; and the engine prepares a query the
        # first time it sees it (tens of ms, more on a busy machine): done now for the one query answered with,
        # or every new worker's first request would run into the deadline.
        evaluate: Callable[[bytes, bytes], bytes] = engine.evaluate_raw
        if mask_path is not None:
            evaluate = _with_mask(engine, path.decode(), mask_path)
        else:
            engine.prepare(path)
    except EngineError as exc:
        sock.sendall(encode(json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()))
        return 1
    sock.sendall(encode(json.dumps({"ok": True, "cpu_ns": time.process_time_ns()}).encode()))
    return _serve(sock, reader, evaluate, path)


def _serve(sock: socket.socket, reader: FrameReader, evaluate: Callable[[bytes, bytes], bytes], path: bytes) -> int:
    """Answer input frames until the pool closes the socket."""
    cpu_ns = time.process_time_ns  # the whole process (Go's GC threads too): what the pool reads from outside
    sent = cpu_ns()
    try:
        while chunk := sock.recv(_RECV_SIZE):
            out = []
            for frame in reader.feed(chunk):  # every complete frame that arrived together, answered with one send
                answer = evaluate(path, frame)
                mark = cpu_ns()
                out.append(marked_header(len(answer), mark))
                out.append(answer)
                if mark - sent >= _FLUSH_NS:
                    sock.sendall(b"".join(out))
                    out, sent = [], mark
            if out:
                sock.sendall(b"".join(out))
                sent = mark
    except FrameError as exc:  # a corrupt stream, or an answer past the limit: the pool fails it and replaces us
        print(f"tollgate engine worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
