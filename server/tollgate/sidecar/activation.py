"""The bundle plugin: poll the bundle source, verify, compile and smoke-test each new revision, swap it in.

Life cycle like OPA's plugins: configure (BundleActivator(config, ...)), start, stop, one status. A new
revision goes through, in order: signature (when trusted keys are configured), load (with size limits),
compile (a new WorkerPoolEngine starts its workers), a contract smoke test (a fixed synthetic input must
give a result the contract accepts; it and the inputs of the most recent decisions must be answered within the
evaluation deadline), persistence (DATA_DIR/bundles/last-good.tar.gz), then an atomic swap
in the EngineSlot. The engine it replaces is closed only once the requests holding it are done. Anything
that fails on the way refuses the revision: the last good one keeps serving and the status keeps the error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tollgate.bundle import (
    DEFAULT_SIZE_LIMIT,
    Activation,
    Bundle,
    BundleError,
    BundleSource,
    BundleStatus,
    DataLimits,
    Failure,
    Fetched,
    FetchError,
    PublicKey,
    SignatureError,
    SourceState,
    TooLarge,
    fsync_directory,
    load_bundle,
    load_public_keys,
    open_source,
    verify_bundle,
    write_file_atomically,
)
from tollgate.clock import Clock, SystemClock
from tollgate.contract import ContractError, DecisionRequest, build_input, parse_result
from tollgate.decisionlog import LogReadError, Query, open_read_only
from tollgate.encoding import canonical_json, format_time
from tollgate.engine import (
    UNDEFINED,
    EngineConfig,
    EngineError,
    EngineSlot,
    Evaluation,
    EvaluationTimeout,
    WorkerPoolEngine,
)
from tollgate.net import Backoff, HttpOptions, Jitter
from tollgate.sidecar._plugins import RUNNING, PluginState, PluginStatus, cancel

if TYPE_CHECKING:  # aiohttp (opa-python-client's) is imported only where a remote engine is configured
    from tollgate.engine._remote import RemoteOpaEngine

log = logging.getLogger(__name__)

#: The input of the contract smoke test: a tool call nobody is allowed to make; any valid answer passes.
SMOKE_REQUEST = DecisionRequest(
    kind="tool",
    principal={"agent_id": "tollgate-smoke-test"},
    action={"server": "tollgate", "name": "smoke_test", "arguments": {}, "resources": []},
)
_SMOKE_NOW = "2026-01-01T00:00:00.000000Z"
#: How many of the most recent decisions' inputs a candidate must also answer in time (one per kind and agent).
SMOKE_RECENT = 5
#: Tries per smoke input before a candidate that runs past the deadline is refused: one slow evaluation on a
#: fresh worker measures the machine's load as much as the policy; a policy that loops is slow every time.
SMOKE_ATTEMPTS = 3

LAST_GOOD = "last-good.tar.gz"
LAST_GOOD_META = "last-good.json"
#: The highest sequence (manifest metadata.sequence) of a signed bundle ever activated here, and its revision.
HIGHEST_SEQUENCE = "sequence.json"


@dataclass(frozen=True)
class ActivatorConfig:
    """How the bundle source is read and checked (`tollgate serve` flags of the same names)."""

    #: --bundle: a directory, a .tar.gz file, or an http(s):// URL.
    source: str
    #: Where the last good bundle is kept (DATA_DIR/bundles).
    state_dir: Path
    #: Directory of trusted public keys (KID.pem); "" means signatures are not checked.
    keys_dir: str = ""
    #: Refuse bundles without a verifying signature.
    require_signatures: bool = False
    #: HTTP sources: seconds between polls, jittered by ±25 %.
    poll_interval: float = 30.0
    #: Directory and file sources: seconds between checks for a change (stat, then a digest).
    local_poll_interval: float = 1.0
    #: HTTP sources: the whole download's deadline, in seconds.
    timeout: float = 10.0
    #: HTTP sources: the bearer token, headers and CA file the service is reached with.
    http: HttpOptions = field(default_factory=HttpOptions)
    #: Largest download, and largest uncompressed bundle, in bytes.
    size_limit: int = DEFAULT_SIZE_LIMIT
    #: What the data documents may hold (bytes, values), checked before any of them is parsed.
    data_limits: DataLimits = field(default_factory=DataLimits)
    #: After a failed poll, the first retry waits about this long; each further failure doubles it.
    min_backoff: float = 1.0
    #: ... up to this.
    max_backoff: float = 300.0
    #: How long a replaced engine may keep finishing the requests that hold it before it is closed.
    retire_timeout: float = 10.0
    #: The data dir whose decision log gives the smoke test its representative inputs (the most recent
    #: decisions' inputs, as logged); None: the synthetic input only.
    smoke_log_dir: Path | None = None


class Refused(Exception):
    """A revision that must not be activated; reason is a metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Called after each activation attempt and poll failure (health, metrics). Exceptions are logged.
Listener = Callable[["BundleStatus", "Activation | None", "Failure | None"], Awaitable[None]]


class BundleActivator:
    """Owns the bundle source, the active revision in the EngineSlot, and their status."""

    def __init__(self, config: ActivatorConfig, slot: EngineSlot, engine_config: EngineConfig, *,
                 listeners: tuple[Listener, ...] = (), clock: Clock = SystemClock()) -> None:
        self._config = config
        self._clock = clock  # activation, failure and poll times in the status
        self._slot = slot
        self._engine_config = engine_config
        self._listeners = listeners
        self._source: BundleSource = open_source(config.source, size_limit=config.size_limit,
                                                 timeout=config.timeout, http=config.http)
        self._keys: dict[str, PublicKey] = load_public_keys(config.keys_dir) if config.keys_dir else {}
        self._status = BundleStatus(source=config.source, state=SourceState.NOT_READY, active=None,
                                    last_error=None, etag="", last_poll=None)
        self._refused: tuple[str, Failure] | None = None  # digest of the last refused revision and why
        self._refused_etag = ""  # and the ETag it came with
        self._failures = 0  # consecutive failed polls (for the backoff)
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def status(self) -> BundleStatus:
        return self._status

    @property
    def source(self) -> BundleSource:
        return self._source

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Activate the source's bundle now (or the persisted one if the source cannot give a good one),
        then keep polling in the background."""
        await self.poll()
        if self._status.active is None:
            await self._activate_persisted()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bundle-poller")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._source.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._next_delay())
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must outlive anything a bundle can do to it
                log.exception("bundle: unexpected error while polling %s", self._config.source)
                self._failures += 1

    def _next_delay(self) -> float:
        config = self._config
        if self._failures:
            # Exponential backoff with jitter (half to all of the step), so a fleet does not retry in step.
            backoff = Backoff(config.min_backoff, config.max_backoff, jitter=Jitter.EQUAL)
            return backoff.delay(self._failures - 1)
        if self._source.kind != "http":
            return config.local_poll_interval
        return config.poll_interval * random.uniform(0.75, 1.25)

    # -- one poll -----------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Fetch the source once; activate what it holds if it is new."""
        try:
            fetched = await asyncio.to_thread(self._source.fetch, self._status.etag)
        except FetchError as exc:
            self._failures += 1
            await self._fail(Failure(self._clock.now(), str(exc), exc.reason))
            return
        self._failures = 0
        now = self._clock.now()
        active = self._status.active
        if fetched is None:  # 304: still what we fetched last, active or refused
            still_refused = self._refused is not None and self._refused_etag == self._status.etag
            await self._settle(now, refused=still_refused)
            return
        if active is not None and fetched.digest == active.digest:
            self._refused = None  # the service went back to what is active
            self._status = replace(self._status, etag=fetched.etag or self._status.etag)
            await self._settle(now, refused=False)
            return
        if self._refused is not None and fetched.digest == self._refused[0]:
            self._status = replace(self._status, etag=fetched.etag)
            await self._settle(now, refused=True)  # refused already: do not compile it again on every poll
            return
        await self.activate(fetched)

    async def _settle(self, now: datetime, *, refused: bool) -> None:
        """A poll that went well and found nothing new to activate."""
        if refused or (self._status.active is None and self._status.last_error is not None):
            state = SourceState.ERROR  # the last error stands: the source still offers what was refused
        else:
            state = SourceState.OK if self._status.active is not None else SourceState.NOT_READY
        self._status = replace(self._status, state=state, last_poll=now)

    # -- activation ---------------------------------------------------------------------------------

    async def activate(self, fetched: Fetched, *, persisted: Path | None = None) -> bool:
        """Verify, load, compile and smoke-test fetched; on success persist it and swap it in."""
        config = self._config
        try:
            signed_by = await asyncio.to_thread(self._verify, fetched)
            bundle, loaded_from = await asyncio.to_thread(self._load, fetched, persisted)
            if signed_by:
                self._check_sequence(bundle)
            engine = await self._start_engine(bundle)
        except Refused as exc:
            failure = Failure(self._clock.now(), str(exc), exc.reason)
            self._refused = (fetched.digest, failure)
            self._refused_etag = fetched.etag
            if fetched.etag:
                self._status = replace(self._status, etag=fetched.etag)
            kept = self._status.active.revision if self._status.active else "none (every request is denied)"
            log.error("bundle: refused a new revision from %s: %s; still serving %s", config.source, exc, kept)
            await self._fail(failure)
            return False
        if loaded_from is not None and persisted is None:
            await asyncio.to_thread(self._persist, loaded_from, fetched, bundle.revision)
        if signed_by and bundle.sequence is not None:
            await asyncio.to_thread(self._raise_sequence, bundle)
        activation = Activation(self._clock.now(), bundle.revision, fetched.digest, signed_by=signed_by,
                                from_persisted=persisted is not None)
        old = self._slot.swap(engine)
        self._refused = None
        self._refused_etag = ""
        self._status = replace(self._status, state=SourceState.OK, active=activation,
                               etag=fetched.etag or self._status.etag, last_poll=activation.time)
        log.info("bundle: activated revision %s (digest %s%s) from %s%s", bundle.revision, fetched.digest[:16],
                 f", signed by {signed_by}" if signed_by else "", config.source,
                 " (persisted copy)" if persisted is not None else "")
        if old is not None:
            task = asyncio.get_running_loop().create_task(self._slot.retire(old, timeout=config.retire_timeout))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        await self._notify(activation, None)
        return True

    def _verify(self, fetched: Fetched) -> str:
        """The key ID that signed the bundle, "" when unsigned and that is allowed; else Refused."""
        config = self._config
        if fetched.archive is None:
            if config.require_signatures:
                raise Refused("unsigned", f"bundle {config.source}: a directory cannot be signed and "
                                          "--require-signatures is set (hint: serve a signed .tar.gz)")
            return ""
        if not self._keys:
            return ""
        try:
            verified = verify_bundle(fetched.archive, self._keys, size_limit=config.size_limit,
                                     data_limits=config.data_limits)
        except TooLarge as exc:
            raise Refused("too_large", f"{config.source}: {exc}") from exc
        except SignatureError as exc:
            if exc.reason == "unsigned" and not config.require_signatures:
                log.warning("bundle: %s is unsigned; accepted because --require-signatures is not set",
                            config.source)
                return ""
            reason = {"unsigned": "unsigned", "unreadable": "corrupt"}.get(exc.reason, "signature")
            raise Refused(reason, f"{config.source}: {exc} ({exc.reason})") from exc
        return verified.keyid

    def _load(self, fetched: Fetched, persisted: Path | None) -> tuple[Bundle, Path | None]:
        """Load the bundle; archives are first written to DATA_DIR/bundles (the loader reads files)."""
        config = self._config

        def load(path: str | Path) -> Bundle:
            return load_bundle(path, size_limit=config.size_limit, data_limits=config.data_limits)

        try:
            if fetched.archive is None:
                return load(config.source), None
            if persisted is not None:
                return load(persisted), persisted
            incoming = config.state_dir / "incoming.tar.gz"
            write_file_atomically(incoming, fetched.archive)
            try:
                return load(incoming), incoming
            except BundleError as exc:
                incoming.unlink(missing_ok=True)
                # Name what the operator configured, not the scratch file it was loaded from.
                raise _refusal(str(exc).replace(str(incoming), config.source), exc) from exc
        except Refused:
            raise
        except BundleError as exc:
            raise _refusal(str(exc), exc) from exc

    async def _start_engine(self, bundle: Bundle) -> WorkerPoolEngine:
        engine = WorkerPoolEngine(bundle, self._engine_config)
        try:
            await engine.start()
        except EngineError as exc:
            raise Refused("compile", f"bundle {bundle.revision}: does not compile: {exc.message}") from exc
        try:
            await _smoke_test(engine, entrypoint=self._engine_config.entrypoint)
            recent = await asyncio.to_thread(recent_inputs, self._config.smoke_log_dir)
            await _answers_in_time(engine, recent)
        except BaseException:
            await engine.close()
            raise
        return engine

    def _highest(self) -> tuple[int, str] | None:
        """The highest sequence accepted here and its revision; None when no sequenced bundle was."""
        path = self._config.state_dir / HIGHEST_SEQUENCE
        try:
            doc = json.loads(path.read_bytes())
            return int(doc["sequence"]), str(doc.get("revision", "?"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Fail closed: without it, any older signed bundle could be replayed.
            raise Refused("rollback", f"bundle: {path} cannot be read ({exc}), so an older signed bundle cannot "
                                      "be told from a newer one (hint: restore the file, or remove it to accept "
                                      "the next signed bundle whatever its sequence)") from exc

    def _check_sequence(self, bundle: Bundle) -> None:
        """Refuse (rollback) a signed bundle older than the newest one accepted here, unless it is a signed
        rollback (`tollgate rollback` re-signs the old revision with a higher sequence and a rollback marker)."""
        highest = self._highest()
        if highest is None or (bundle.sequence is not None and bundle.sequence >= highest[0]):
            return
        seen = f"sequence {highest[0]} (revision {highest[1]}) was accepted here"
        given = "has no sequence" if bundle.sequence is None else f"has sequence {bundle.sequence}"
        raise Refused("rollback", f"bundle {bundle.revision}: {given}, but {seen}: an older signed bundle offered "
                                  "again (hint: to go back to an older revision on purpose, use `tollgate rollback`, "
                                  "which signs that intent)")

    def _raise_sequence(self, bundle: Bundle) -> None:
        highest = self._highest()
        assert bundle.sequence is not None
        if highest is not None and highest[0] >= bundle.sequence:
            return
        doc = {"sequence": bundle.sequence, "revision": bundle.revision, "rollback_of": bundle.rollback_of,
               "accepted_at": format_time(self._clock.now())}
        write_file_atomically(self._config.state_dir / HIGHEST_SEQUENCE,
                              json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    def _persist(self, loaded_from: Path, fetched: Fetched, revision: str) -> None:
        """Keep the activated archive as the last good bundle (rename: readers see the old or the new)."""
        target = self._config.state_dir / LAST_GOOD
        os.replace(loaded_from, target)
        meta = {"source": self._config.source, "etag": fetched.etag, "revision": revision,
                "digest": fetched.digest, "saved_at": format_time(self._clock.now())}
        write_file_atomically(self._config.state_dir / LAST_GOOD_META,
                              json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")
        fsync_directory(self._config.state_dir)

    async def _activate_persisted(self) -> None:
        path = self._config.state_dir / LAST_GOOD
        if self._source.kind == "directory" or not path.is_file():
            return
        try:
            meta: dict[str, Any] = json.loads((self._config.state_dir / LAST_GOOD_META).read_text())
            data = await asyncio.to_thread(path.read_bytes)
        except (OSError, ValueError) as exc:
            log.error("bundle: the persisted bundle %s cannot be read: %s", path, exc)
            return
        if meta.get("source") != self._config.source:
            # Another source's bundle (say staging's, before --bundle named prod's) must not stand in for this one.
            log.error("bundle: the persisted bundle %s came from %s, not %s; not using it", path,
                      meta.get("source"), self._config.source)
            return
        fetched = Fetched(digest=hashlib.sha256(data).hexdigest(), archive=data, etag=str(meta.get("etag", "")))
        log.warning("bundle: %s gave no good bundle at start-up; starting from the persisted revision %s",
                    self._config.source, meta.get("revision", "?"))
        error = self._status.last_error
        if await self.activate(fetched, persisted=path):
            # Serving, but the source itself is still failing: keep its error visible.
            self._status = replace(self._status, state=SourceState.ERROR, last_error=error)

    # -- status -------------------------------------------------------------------------------------

    async def _fail(self, failure: Failure) -> None:
        if failure.reason in ("download", "too_large"):
            log.warning("bundle: %s", failure.message)
        self._status = replace(self._status, state=SourceState.ERROR, last_error=failure, last_poll=failure.time)
        await self._notify(None, failure)

    async def _notify(self, activation: Activation | None, failure: Failure | None) -> None:
        for listener in self._listeners:
            try:
                await listener(self._status, activation, failure)
            except Exception:
                log.exception("bundle: a status listener failed")


def _refusal(message: str, exc: BundleError) -> Refused:
    """A bundle the loader refused: too_large past a limit (before its data was parsed), else corrupt."""
    return Refused("too_large" if isinstance(exc, TooLarge) else "corrupt", message)


async def _smoke_test(engine: WorkerPoolEngine, *, entrypoint: str) -> None:
    """Evaluate the fixed synthetic input; the result must be one the contract accepts, and the decision-log
    mask, when the bundle has one, a set of entries (one that fails here would erase every record's
    arguments and context)."""
    input_json = canonical_json(build_input(SMOKE_REQUEST, now=_SMOKE_NOW)).encode()
    where = f"bundle {engine.revision}: contract smoke test"
    try:
        evaluation = await _in_time(engine, input_json, where=f"{where} (the synthetic input)")
        value = evaluation.value
        if isinstance(value, EngineError):
            raise value
    except EngineError as exc:
        raise Refused("smoke_test", f"{where}: evaluation failed: {exc}") from exc
    if value is UNDEFINED:
        raise Refused("smoke_test", f"{where}: data.{entrypoint.strip('/').replace('/', '.')} is undefined "
                                    "(hint: check the entrypoint and the package name)")
    try:
        parse_result(value)
    except ContractError as exc:
        raise Refused("smoke_test", f"{where}: the result breaks the contract: {exc}") from exc
    mask = evaluation.mask
    if isinstance(mask, EngineError):
        raise Refused("smoke_test", f"{where}: data.tollgate.log.mask failed: {mask}")
    if mask is not UNDEFINED and not isinstance(mask, list):
        kind = {str: "a string", dict: "an object", bool: "a boolean", type(None): "null"}.get(type(mask), "a number")
        raise Refused("smoke_test", f"{where}: data.tollgate.log.mask is {kind}, not a set of entries "
                                    "(hint: JSON pointers or {op, path, value} objects; see docs/POLICY.md)")


async def _in_time(engine: WorkerPoolEngine, input_json: bytes, *, where: str) -> Evaluation:
    """The evaluation of input_json, tried SMOKE_ATTEMPTS times while it runs past the deadline; Refused
    (smoke_test) when every try does: such a revision would answer DENY deadline_exceeded to every request."""
    last = ""
    for attempt in range(1, SMOKE_ATTEMPTS + 1):
        try:
            return await engine.evaluate_with_mask(input_json)
        except EvaluationTimeout as exc:
            log.warning("%s: ran past the evaluation deadline (try %d of %d): %s", where, attempt, SMOKE_ATTEMPTS,
                        exc.message)
            last = exc.message
    raise Refused("smoke_test", f"{where}: ran past the evaluation deadline on {SMOKE_ATTEMPTS} tries in a row "
                                f"({last}); every request would be denied deadline_exceeded (hint: make "
                                "the policy faster, or raise --eval-timeout-ms if this machine is overloaded)")


async def _answers_in_time(engine: WorkerPoolEngine, inputs: Sequence[bytes]) -> None:
    """Each recent decision's input must be answered within the deadline (what it answers is the policy's
    business: a new revision may well decide differently)."""
    for n, input_json in enumerate(inputs, 1):
        await _in_time(engine, input_json,
                       where=f"bundle {engine.revision}: smoke test (recent decision {n} of {len(inputs)})")


def recent_inputs(data_dir: Path | None, *, limit: int = SMOKE_RECENT) -> list[bytes]:
    """The input documents of the most recent decisions in DATA_DIR's log, one per (kind, agent), at most
    limit of them, as logged (masked); none when there is no log yet or it cannot be read."""
    if data_dir is None:
        return []
    try:
        with open_read_only(data_dir) as store:
            records = store.find(Query(limit=limit * 20))
            inputs = [stored.decision_record().input for stored in reversed(records)]
    except (LogReadError, ValueError) as exc:
        log.info("bundle: no recent decisions for the smoke test (%s)", exc)
        return []
    chosen: dict[tuple[str, str], bytes] = {}
    for doc in inputs:
        principal = doc.get("principal")
        agent = str(principal.get("agent_id", "")) if isinstance(principal, dict) else ""
        chosen.setdefault((str(doc.get("kind", "")), agent), canonical_json(dict(doc)).encode())
    return list(chosen.values())[:limit]


class RemoteEngineActivator(BundleActivator):
    """With a remote OPA engine (`engine: opa+http://HOST:PORT`) the bundle lives in OPA, which loads it itself:
    the sidecar loads none. The engine sits in the slot from the start (so a request while OPA is unreachable is a
    logged DENY engine_error); every poll_interval its /health decides readiness (health_plugin) and its status
    API the active revision. `tollgate serve` uses it in place of BundleActivator."""

    def __init__(self, engine: RemoteOpaEngine, slot: EngineSlot, *, poll_interval: float = 5.0,
                 listeners: tuple[Listener, ...] = (), clock: Clock = SystemClock()) -> None:
        self._engine, self._slot, self._listeners, self._clock = engine, slot, listeners, clock
        self._interval = poll_interval
        self._status = BundleStatus(source=f"opa+{engine.target.url}", state=SourceState.NOT_READY, active=None,
                                    last_error=None, etag="", last_poll=None)
        self.healthy = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._engine.start()
        self._slot.swap(self._engine)
        await self.poll()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="remote-opa-health")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("remote OPA %s: unexpected error while polling", self._engine.target.url)

    async def poll(self) -> None:
        """Ask OPA whether it is healthy (its bundle activated) and which revision it serves."""
        now, was = self._clock.now(), self.healthy
        self.healthy = await self._engine.healthy()
        if not self.healthy:
            failure = Failure(now, f"OPA at {self._engine.target.url} is not healthy (GET /health?bundles: "
                                   f"{self._engine.unhealthy})", "download")
            if was or self._status.last_error is None:
                log.error("remote OPA: %s; requests are denied (engine_error) while it cannot answer", failure.message)
            self._status = replace(self._status, state=SourceState.ERROR, last_error=failure, last_poll=now)
            await self._notify(None, failure)
            return
        revision = await self._engine.refresh_revision()
        active = self._status.active
        activation = None if active is not None and active.revision == revision else Activation(now, revision, "")
        if activation is not None:
            log.info("remote OPA %s: serving bundle revision %s", self._engine.target.url, revision)
        self._status = replace(self._status, state=SourceState.OK, active=activation or active, last_error=None,
                               last_poll=now)
        if activation is not None or not was:
            await self._notify(activation, None)

    def health_plugin(self) -> RemoteHealthPlugin:
        return RemoteHealthPlugin(self)


class RemoteHealthPlugin:
    """Readiness follows the remote OPA's health: SERVING only while its /health answers 200."""

    name = "remote opa"
    required = True

    def __init__(self, activator: RemoteEngineActivator) -> None:
        self._activator = activator

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def status(self) -> PluginStatus:
        if self._activator.healthy:
            return RUNNING
        error = self._activator.status.last_error
        return PluginStatus(PluginState.ERROR, error.message if error else "remote OPA not polled yet")
