"""Approval notifications: signed webhooks and Slack messages, sent from the state store's outbox.

Every approval change that people should hear of (opened, decided, expired undecided) writes an event into the
outbox in the same transaction as the change (state/_outbox.py); this plugin sends them. It runs in every
sidecar: each claims due events under a lease (on PostgreSQL `FOR UPDATE SKIP LOCKED`), so exactly one member
of a fleet sends each one, and a sidecar that dies mid-send leaves its events to the others once the lease runs
out. Delivery is at least once, with the event id in every message for receivers to drop repeats; a failed
receiver is retried with jittered backoff (tollgate.net.Backoff) until max_attempts, then the event is dead
(kept in the outbox, counted in the metrics, logged). Nothing here is on the decision path: a slow or failing
receiver delays notifications, never an answer.

A generic receiver gets the event as JSON, signed with HMAC-SHA256 over `TIMESTAMP.BODY` with its secret:
`X-Tollgate-Signature: t=TIMESTAMP, v1=HEX` (verify_signature is what a receiver does). A slack receiver gets
an incoming-webhook message, `{"text": ...}`, linking the approval's page in the console.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from tollgate.clock import Clock
from tollgate.decisionlog._query import action_summary
from tollgate.encoding import canonical_json, parse_time
from tollgate.net import Backoff, HttpOptions, Jitter, RequestFailed
from tollgate.sidecar._plugins import NOT_STARTED, RUNNING, PluginState, PluginStatus, cancel
from tollgate.state import StateError
from tollgate.state._outbox import DECIDED, OPENED, OutboxBacklog, OutboxEvent

if TYPE_CHECKING:
    from tollgate.net import HttpClient, Response
    from tollgate.sidecar.config import ServeConfig
    from tollgate.state._protocol import OutboxStore

log = logging.getLogger("tollgate")

KINDS = ("generic", "slack")
#: A receiver's groups entry that takes every approval's events.
EVERY_GROUP = "*"
SIGNATURE_HEADER = "X-Tollgate-Signature"
EVENT_HEADER = "X-Tollgate-Event"
EVENT_ID_HEADER = "X-Tollgate-Event-Id"
#: Seconds a receiver should accept a signature's timestamp either side of its own clock (replays past it fail).
SIGNATURE_TOLERANCE = 300
#: Seconds one delivery (connect, send, read the answer) may take.
SEND_TIMEOUT = 10.0
#: Seconds between looks at the outbox when nothing woke the sender; between expiry sweeps.
POLL_SECONDS = 2.0
SWEEP_SECONDS = 5.0
#: How often the sender checks whether this process changed an approval (a look in memory, not at the store).
WAKE_SECONDS = 0.1
#: Retries back off from one second to five minutes, jittered so a fleet does not retry in step.
RETRY = Backoff(1.0, 300.0, jitter=Jitter.EQUAL)
DEFAULT_MAX_ATTEMPTS = 12  # about 20 minutes of retries at the backoff's steps


@dataclass(frozen=True)
class Receiver:
    """One entry of the notifications configuration."""

    #: Its name in the outbox (which receivers already have an event) and in logs: the `name` key, else derived
    #: from the URL's digest (a Slack webhook URL is itself a secret: it is never stored or logged).
    name: str
    url: str = field(repr=False)
    kind: str
    #: Approver groups (the names of approver_groups; group:NAME is read as NAME) whose approvals it hears of.
    groups: tuple[str, ...]
    secret_file: str = ""
    #: The HMAC key (secret_file's contents), read at start.
    secret: bytes = field(default=b"", repr=False)

    @property
    def where(self) -> str:
        """The URL as logs show it: scheme and host only."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def parse_receivers(raw: Any) -> tuple[Receiver, ...]:
    """The notifications key, checked (ValueError naming the entry and the key); secrets are not read yet."""
    if not isinstance(raw, list):
        raise ValueError(f"notifications: must be a list of {{url, kind, groups, secret_file}}, got {raw!r}")
    found: list[Receiver] = []
    for number, entry in enumerate(raw):
        where = f"notifications[{number}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: must be a mapping with url, kind, groups (and secret_file), got {entry!r}")
        unknown = set(entry) - {"name", "url", "kind", "groups", "secret_file"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))} (known: name, url, kind, "
                             "groups, secret_file)")
        url, kind = entry.get("url"), entry.get("kind", "generic")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"{where}.url: must be an http(s):// URL")  # not shown: a Slack URL is a secret
        if kind not in KINDS:
            raise ValueError(f"{where}.kind: must be one of {', '.join(KINDS)}, not {kind!r}")
        groups = entry.get("groups")
        if not isinstance(groups, list) or not groups or not all(isinstance(g, str) and g.strip() for g in groups):
            raise ValueError(f"{where}.groups: must be a non-empty list of approver group names (\"*\": every "
                             f"approval), got {groups!r}")
        secret_file = entry.get("secret_file", "")
        if kind == "generic" and not (isinstance(secret_file, str) and secret_file):
            raise ValueError(f"{where}.secret_file: required for a generic receiver (the HMAC key it verifies "
                             "signatures with)")
        if not isinstance(secret_file, str) or (secret_file and not Path(secret_file).is_file()):
            raise ValueError(f"{where}.secret_file: {secret_file!r} is not a readable file")
        name = entry.get("name") or "receiver-" + hashlib.sha256(url.encode()).hexdigest()[:12]
        if not isinstance(name, str):
            raise ValueError(f"{where}.name: must be a string, got {name!r}")
        found.append(Receiver(name=name, url=url, kind=kind, secret_file=secret_file,
                              groups=tuple(g.removeprefix("group:") for g in groups)))
    names = [r.name for r in found]
    if len(set(names)) != len(names):
        raise ValueError("notifications: two entries have the same name (or url): give each a name of its own")
    return tuple(found)


def receivers_from(config: ServeConfig) -> tuple[Receiver, ...]:
    """The configuration's receivers with their secrets read, and console_url and notification_max_attempts
    checked (ConfigError naming the key: a start-up error)."""
    from tollgate.sidecar.config import ConfigError

    if config.console_url and (urlsplit(config.console_url).scheme not in ("http", "https")
                               or not urlsplit(config.console_url).hostname):
        raise ConfigError(f"console_url: must be an http(s)://HOST[:PORT][/PATH] URL, not {config.console_url!r}")
    if not 1 <= config.notification_max_attempts <= 1000:
        raise ConfigError(f"notification_max_attempts: must be 1 to 1000, not {config.notification_max_attempts}")
    raw: Any = config.notifications
    try:
        if isinstance(raw, str):  # given as a flag: YAML or JSON text
            raw = yaml.safe_load(raw)
        return load_secrets(parse_receivers(raw))
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(str(exc)) from exc


def load_secrets(receivers: Sequence[Receiver]) -> tuple[Receiver, ...]:
    """The receivers with their secret files read (ValueError when one cannot be, or is empty)."""
    loaded = []
    for receiver in receivers:
        if not receiver.secret_file:
            loaded.append(receiver)
            continue
        try:
            secret = Path(receiver.secret_file).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"notifications: {receiver.name}: cannot read secret_file {receiver.secret_file!r} "
                             f"({exc.strerror or exc})") from exc
        if len(secret) < 16:
            raise ValueError(f"notifications: {receiver.name}: secret_file {receiver.secret_file!r} holds under 16 "
                             "bytes: use a random secret of 32 bytes or more")
        loaded.append(replace(receiver, secret=secret))
    return tuple(loaded)


# -- what is sent ---------------------------------------------------------------------------------------


def sign(secret: bytes, body: bytes, *, timestamp: int) -> str:
    """The X-Tollgate-Signature value of body sent at timestamp (Unix seconds)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp}, v1={mac}"


def verify_signature(secret: bytes, header: str, body: bytes, *, now: float,
                     tolerance: float = SIGNATURE_TOLERANCE) -> str:
    """What a receiver checks: why the signature header does not prove body ("" when it does). A timestamp
    further than tolerance seconds from now is refused, so a captured request cannot be replayed later."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    stamp, given = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or not given:
        return "no t=TIMESTAMP, v1=SIGNATURE in the header"
    if abs(now - int(stamp)) > tolerance:
        return f"timestamp {stamp} is more than {tolerance:g} s from now: a replay, or a clock that is off"
    expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "" if hmac.compare_digest(expected, given) else "signature does not match the body"


def approval_link(console_url: str, approval_id: str) -> str:
    """The approval's page in the console ("" when no console_url is configured)."""
    return f"{console_url.rstrip('/')}/approvals/{approval_id}" if console_url else ""


def generic_body(event: OutboxEvent, *, link: str) -> bytes:
    """The generic receiver's JSON: the event, the approval as it is after the change, and its page."""
    return canonical_json({"id": event.id, "type": event.type, "created_at": event.created_at, "url": link,
                           "approval": dict(event.payload)}).encode()


def slack_body(event: OutboxEvent, *, link: str) -> bytes:
    """A Slack incoming-webhook message. Values from the request are escaped (&, <, >): an argument cannot
    ping a channel (<!channel>) or forge a link."""
    approval = event.payload
    principal = approval.get("principal") or {}
    kind = str(approval.get("kind", ""))
    asked = action_summary({"kind": kind, kind: approval.get("action") or {}}, arguments=True)
    who = " ".join(f"{k} {principal[k]}" for k in ("agent_id", "user", "session_id") if principal.get(k))
    if event.type == OPENED:
        head = f"Approval needed: {asked}"
        tail = f"expires {approval.get('expires_at', '')}"
    elif event.type == DECIDED:
        head = f"Approval {approval.get('status', '')}: {asked}"
        tail = f"by {approval.get('decided_by', '')}: {approval.get('reason', '')}"
    else:
        head, tail = f"Approval expired undecided: {asked}", f"expired {approval.get('expires_at', '')}"
    text = f"{_slack_escape(head)}\n{_slack_escape(who)}, {_slack_escape(tail)}"
    approval_id = _slack_escape(str(approval.get("id", "")))
    text += f"\n<{_slack_escape(link)}|{approval_id}>" if link else f"\n{approval_id}"
    return json.dumps({"text": text}).encode()


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def hears(receiver: Receiver, approval: Mapping[str, Any], approver_groups: Mapping[str, Sequence[str]]) -> bool:
    """Whether receiver is for this approval: one of its groups is among the approval's approvers, by name
    (group:NAME) or through a member named on their own."""
    if EVERY_GROUP in receiver.groups:
        return True
    approvers = [str(a) for a in approval.get("approvers") or ()]
    for group in receiver.groups:
        if f"group:{group}" in approvers or any(a in approver_groups.get(group, ()) for a in approvers):
            return True
    return False


# -- the sender -------------------------------------------------------------------------------------------


class NotifyMetrics:
    """The sender's metrics, on the sidecar's registry: deliveries by result, and the outbox's backlog."""

    def __init__(self, registry: CollectorRegistry | None, clock: Clock) -> None:
        self._clock = clock
        self.backlog = OutboxBacklog(0, 0, "")
        self.sent = Counter("tollgate_notifications_sent", "Notification deliveries, by receiver kind and result "
                            "(delivered, failed: retried, dead: given up).", ["kind", "result"], registry=registry)
        Gauge("tollgate_notifications_pending", "Events in the outbox still to deliver (fleet-wide on a shared "
              "store).", registry=registry).set_function(lambda: self.backlog.pending)
        Gauge("tollgate_notifications_dead", "Events given up on after the last attempt.",
              registry=registry).set_function(lambda: self.backlog.dead)
        Gauge("tollgate_notifications_lag_seconds", "Age of the oldest event still to deliver (0 when none).",
              registry=registry).set_function(self.lag)

    def lag(self) -> float:
        if not self.backlog.oldest_pending:
            return 0.0
        return max(0.0, self._clock.time() - parse_time(self.backlog.oldest_pending).timestamp())


class Notifier:
    """Claims due events and delivers each to the receivers it is for, then settles it in the outbox."""

    def __init__(self, outbox: OutboxStore, receivers: Sequence[Receiver], *, owner: str, console_url: str,
                 approver_groups: Mapping[str, Sequence[str]], max_attempts: int, clock: Clock,
                 metrics: NotifyMetrics) -> None:
        from tollgate.net import HttpClient

        self.outbox = outbox
        self.receivers = tuple(receivers)
        #: This process's claims: the sidecar id and a random suffix, new at every start.
        self.owner = owner
        self._console_url = console_url
        self._groups = approver_groups
        self._max_attempts = max_attempts
        self._clock = clock
        self.metrics = metrics
        self._clients: dict[str, HttpClient] = {r.name: HttpClient(HttpOptions()) for r in self.receivers}
        #: Seconds a claim is held: every receiver may take its whole timeout, with room to spare.
        self.lease = 30 + SEND_TIMEOUT * max(1, len(self.receivers))

    async def pass_once(self) -> int:
        """Send every due event, oldest first (a receiver hears of an approval opened before it hears it decided);
        returns how many were settled. One claim per event: its lease covers that event's sends only, however
        long the ones before it took."""
        settled = 0
        while claimed := await self.outbox.claim(owner=self.owner, limit=1, lease_seconds=self.lease):
            settled += await self._deliver(claimed[0])
        return settled

    async def _deliver(self, event: OutboxEvent) -> int:
        delivered, errors, retry_after = list(event.delivered), [], None
        for receiver in self.receivers:
            if receiver.name in event.delivered or not hears(receiver, event.payload, self._groups):
                continue
            try:
                answer = await asyncio.to_thread(self._send, receiver, event)
            except RequestFailed as exc:
                errors.append(f"{receiver.name}: {exc}")
                continue
            if answer.ok:
                delivered.append(receiver.name)
                self.metrics.sent.labels(receiver.kind, "delivered").inc()
                continue
            errors.append(f"{receiver.name}: HTTP {answer.status} {answer.reason}")
            retry_after = _retry_after(answer.headers) or retry_after
        error = "; ".join(errors)
        dead = bool(error) and event.attempts + 1 >= self._max_attempts
        retry_in = None if dead or not error else RETRY.delay(event.attempts, retry_after=retry_after)
        if error:
            result = "dead" if dead else "failed"
            for receiver in self.receivers:
                if receiver.name not in delivered and hears(receiver, event.payload, self._groups):
                    self.metrics.sent.labels(receiver.kind, result).inc()
            log_at = log.error if dead else log.warning
            log_at("notifications: %s %s (%s), attempt %d of %d: %s%s", event.type, event.approval_id, event.id,
                   event.attempts + 1, self._max_attempts, error,
                   "; given up (the event stays in the outbox as dead)" if dead else f"; retry in {retry_in:.1f}s")
        if not await self.outbox.settle(event.id, owner=self.owner, delivered=delivered, error=error,
                                        retry_in=retry_in):
            log.warning("notifications: %s: the claim ran out before it was settled; another sender may send it "
                        "again (receivers drop repeats by event id)", event.id)
        return 1

    def _send(self, receiver: Receiver, event: OutboxEvent) -> Response:
        link = approval_link(self._console_url, event.approval_id)
        headers = {"Content-Type": "application/json", EVENT_HEADER: event.type, EVENT_ID_HEADER: event.id}
        if receiver.kind == "slack":
            body = slack_body(event, link=link)
        else:
            body = generic_body(event, link=link)
            headers[SIGNATURE_HEADER] = sign(receiver.secret, body, timestamp=int(self._clock.time()))
        return self._clients[receiver.name].request("POST", receiver.url, timeout=SEND_TIMEOUT, body=body,
                                                    headers=headers)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


class NotifyPlugin:
    """The sender's life cycle: a loop that wakes when this process changed an approval (generation) and every
    POLL_SECONDS (another replica's, or a console's, changes), and sweeps for expired approvals. Stopping gives
    back this process's claims, so a restarted sidecar sends them at once."""

    name = "notifications"
    required = False  # a receiver down delays notifications, never a decision

    def __init__(self, notifier: Notifier, *, generation: Callable[[], int]) -> None:
        self.notifier = notifier
        self._generation = generation
        self._task: asyncio.Task[None] | None = None
        self._status = NOT_STARTED

    async def start(self) -> None:
        self._status = RUNNING
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        log.info("notifications: %d receivers (%s)", len(self.notifier.receivers),
                 ", ".join(f"{r.name} {r.kind} {r.where}" for r in self.notifier.receivers))

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self._status = NOT_STARTED
        try:
            await self.notifier.outbox.release(self.notifier.owner)
        except StateError as exc:  # the claims then run out on their own
            log.warning("notifications: claims not given back (%s)", exc)
        await asyncio.to_thread(self.notifier.close)

    def status(self) -> PluginStatus:
        return self._status

    async def _run(self) -> None:
        """Two loops: sending (which a hanging receiver may hold for its timeout) and the expiry sweep with the
        backlog the metrics show (which must go on meanwhile)."""
        await asyncio.gather(self._send_loop(), self._sweep_loop())

    async def _send_loop(self) -> None:
        seen, polled = -1, 0.0
        while True:
            generation = self._generation()
            if generation != seen or time.monotonic() - polled >= POLL_SECONDS:
                seen, polled = generation, time.monotonic()
                await self._guarded(self.notifier.pass_once)
            await asyncio.sleep(WAKE_SECONDS)

    async def _sweep_loop(self) -> None:
        async def sweep() -> None:
            await self.notifier.outbox.sweep_expired()
            self.notifier.metrics.backlog = await self.notifier.outbox.backlog()

        while True:
            await self._guarded(sweep)
            await asyncio.sleep(SWEEP_SECONDS)

    async def _guarded(self, work: Callable[[], Awaitable[object]]) -> None:
        """Run work; a store that cannot be reached is this plugin's status (logged once per change)."""
        try:
            await work()
        except StateError as exc:
            if self._status.message != str(exc):
                log.error("notifications: %s", exc)
            self._status = PluginStatus(PluginState.ERROR, str(exc))
        else:
            self._status = RUNNING


def sender_id(sidecar_id: str) -> str:
    """A claim owner unique to this process: the sidecar id and a random suffix."""
    return f"{sidecar_id}#{secrets.token_hex(4)}"
