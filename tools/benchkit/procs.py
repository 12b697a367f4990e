"""The servers under test as subprocesses: start, stop, their stderr, and their process trees' CPU and memory."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
NOOP, TOLLGATE = "noop", "tollgate"  # the two targets, in the order they are measured
#: The line both servers print on stdout when they accept requests.
READY_LINE = re.compile(r"serving on (?P<host>[^\s:]+):(?P<port>\d+)")
#: A problem line in a server's stderr (Tollgate logs INFO there too, which is not worth reporting).
STDERR_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Exception")

START_TIMEOUT = 240.0  # seconds a server may take to print its ready line (workers compile the bundle)
STOP_TIMEOUT = 20.0  # seconds after SIGTERM before SIGKILL (Tollgate drains for up to 15 s)
RSS_SAMPLE_INTERVAL = 0.2
RETIRING_WORKER = "engine: retiring worker"  # what the pool logs when it replaces a worker
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """The benchmark could not measure: a target did not start or answer, or h2load failed."""

# -- processes -----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Runs in the child before exec: if the benchmark itself is killed, its servers get SIGTERM.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Target:
    """One server under test, started as a subprocess and stopped when the benchmark ends."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    data_dir: Path | None = None  # Tollgate's, for the decision log
    address: str = ""
    exit_code: int | None = None

    @property
    def decision_db(self) -> Path | None:
        return self.data_dir / "decisions.db" if self.data_dir else None


def start_target(name: str, argv: Sequence[str], workdir: Path, *, data_dir: Path | None = None) -> Target:
    stdout, stderr = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which then stops servers in order
            preexec_fn=_die_with_parent,
        )
    target = Target(name, list(argv), proc, stdout, stderr, data_dir)
    target.address = _wait_ready(target)
    return target


def _wait_ready(target: Target) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = READY_LINE.search(target.stdout.read_text(errors="replace"))
        if match:
            return f"{match['host']}:{match['port']}"
        if target.proc.poll() is not None:
            raise BenchError(f"{target.name} exited with {target.proc.returncode} before serving:\n"
                             f"{tail(target.stderr)}")
        time.sleep(0.05)
    raise BenchError(f"{target.name} did not print its ready line within {START_TIMEOUT:g}s:\n"
                     f"{tail(target.stderr)}")


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join("  " + line for line in text[-lines:]) or "  (stderr is empty)"


def stop_target(target: Target) -> None:
    """SIGTERM (Tollgate drains and flushes its log), then SIGKILL if it does not exit in time."""
    if target.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            target.proc.send_signal(signal.SIGTERM)
        try:
            target.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                target.proc.kill()
            target.proc.wait()
    target.exit_code = target.proc.returncode


def stderr_problems(target: Target) -> list[str]:
    if not target.stderr.exists():
        return []
    lines = target.stderr.read_text(errors="replace").splitlines()
    return [line for line in lines if STDERR_PROBLEM.search(line)]


def worker_retirements(target: Target) -> int:
    """Engine workers the server has retired so far: its stderr's "retiring worker" lines (engine/_pool.py)."""
    if not target.stderr.exists():
        return 0
    return target.stderr.read_text(errors="replace").count(RETIRING_WORKER)

# -- process trees: memory and CPU ---------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """root, then every descendant, found through /proc/*/stat (no `children` file needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int, *, tid: int | None = None, reaped_children: bool = True) -> float:
    """User + system CPU time of a process (or one of its threads), plus that of the children it reaped.

    Counting reaped children keeps a tree's total right when an engine worker is replaced mid-run.
    """
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        stat = Path(path).read_text()
    except OSError:
        return 0.0
    after_comm = stat[stat.rindex(")") + 2 :].split()
    ticks = int(after_comm[11]) + int(after_comm[12])  # utime, stime
    if reaped_children and tid is None:
        ticks += int(after_comm[13]) + int(after_comm[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used (and the hypervisor has stolen), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment: the server (tree, process, main thread), the load generator, everyone."""

    at: float
    tree: float
    process: float
    main_thread: float
    generator: float  # children of this process that have exited: the finished h2load or Poisson runs
    own: float
    machine: float

    @classmethod
    def take(cls, server_pid: int) -> CpuSample:
        times = os.times()
        return cls(
            at=time.monotonic(), tree=sum(cpu_seconds(pid) for pid in process_tree(server_pid)),
            process=cpu_seconds(server_pid, reaped_children=False),
            main_thread=cpu_seconds(server_pid, tid=server_pid),
            generator=times.children_user + times.children_system, own=times.user + times.system,
            machine=machine_busy_seconds(),
        )


@dataclass(frozen=True)
class CpuUse:
    """Cores used during one run (CPU seconds per second of wall time).

    For a server: its whole process tree (with engine workers), its main process (with the gRPC and
    decision-log threads), and the main thread alone (the asyncio loop, which holds the GIL).
    """

    tree: float
    process: float
    main_thread: float
    generator: float  # the load generator (h2load, or the Poisson client)
    other: float  # everything else on the machine: other tenants, the hypervisor's steal

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample) -> CpuUse:
        wall = after.at - before.at
        tree, generator, own = after.tree - before.tree, after.generator - before.generator, after.own - before.own
        other = max(0.0, after.machine - before.machine - tree - generator - own)
        return cls(tree / wall, (after.process - before.process) / wall,
                   (after.main_thread - before.main_thread) / wall, generator / wall, other / wall)

    def per_request_us(self, throughput: float) -> dict[str, float]:
        """CPU microseconds per answered request: a cost that noise on a shared machine moves less."""
        if throughput <= 0:
            return {"tree": math.nan, "process": math.nan, "main_thread": math.nan}
        scale = 1e6 / throughput
        return {"tree": self.tree * scale, "process": self.process * scale,
                "main_thread": self.main_thread * scale}


@dataclass
class MemoryPeak:
    """The largest figures seen for one server's process tree (VmHWM is each process's own peak RSS)."""

    tree_hwm_kib: int = 0
    main_hwm_kib: int = 0
    processes: int = 0


class MemorySampler:
    """Samples each watched target's process tree in the background; the peak of the sum is what is reported."""

    def __init__(self) -> None:
        self._targets: dict[str, Target] = {}
        self._lock = threading.Lock()
        self.peaks: dict[str, MemoryPeak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def watch(self, target: Target) -> None:
        with self._lock:
            self._targets[target.name] = target
            self.peaks.setdefault(target.name, MemoryPeak())

    def peak(self, name: str) -> MemoryPeak:
        """The peak so far (a copy: sampling goes on)."""
        self.sample()
        with self._lock:
            return dataclasses.replace(self.peaks[name])

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            for target in self._targets.values():
                if target.proc.poll() is not None:
                    continue
                tree = process_tree(target.proc.pid)
                peak = self.peaks[target.name]
                peak.tree_hwm_kib = max(peak.tree_hwm_kib, sum(_status_kib(pid, "VmHWM") for pid in tree))
                peak.main_hwm_kib = max(peak.main_hwm_kib, _status_kib(target.proc.pid, "VmHWM"))
                peak.processes = max(peak.processes, len(tree))


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
