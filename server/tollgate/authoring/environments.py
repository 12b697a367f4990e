"""The environments file (`bundles/environments.yaml`): which environments exist, the keys each trusts, the gates a
promotion into it must pass, and where its channel is published. Every mistake is named by its key."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tollgate.authoring.replay import Transition, parse_transitions
from tollgate.encoding import parse_moment

#: The gates a promotion can be held to, in the order they are checked and reported.
GATES = ("tests", "signed", "replay", "from")
DEFAULT_ENVIRONMENTS = Path("bundles") / "environments.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_DEFAULT_FAIL_ON = "deny→allow"


class PromotionError(Exception):
    """A promotion, rollback or status that cannot proceed; the message says what, to what, and what to do."""


class EnvironmentsError(PromotionError):
    """The environments file is wrong; the message names the file and the key."""


# -- the environments file ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayGate:
    """Replay the environment's recorded decisions against the candidate; fail on unacknowledged flips."""

    #: A JSON Lines file of decision records (as `tollgate replay --decisions` reads), or None.
    decisions: Path | None
    #: A sidecar's data directory (its decisions.db), or None; exactly one of decisions, data_dir, state_store
    #: is set.
    data_dir: Path | None
    #: Transitions that fail the gate unless acknowledged (default deny→allow).
    fail_on: frozenset[Transition]
    #: Only records at or after this (RFC 3339 time or a duration back from now, e.g. 7d).
    since: str | None = None
    #: Only the most recent this many records.
    limit: int | None = None
    #: The policy document evaluated, as for `tollgate serve`.
    entrypoint: str = "tollgate/decision"
    #: The fleet's shared store (a postgresql:// URL), whose decision log the sidecars ship to, or None.
    state_store: str | None = None
    #: A file holding the state store's password (as `tollgate serve --state-store-password-file`), or None.
    password_file: Path | None = None

    @property
    def source(self) -> str:
        """How messages name the recorded decisions (a state store's URL without its password)."""
        if self.state_store is not None:
            from tollgate.state.postgres import redact

            return f"the fleet's decision log in {redact(self.state_store)}"
        return str(self.decisions if self.decisions is not None else Path(f"{self.data_dir}/decisions.db"))


@dataclass(frozen=True)
class Environment:
    """One environment: where its channel is published, what it trusts, and what a promotion into it must pass."""

    name: str
    #: Directory of trusted public keys (KID.pem), or None when nothing is checked against keys.
    keys: Path | None
    #: Its sidecars refuse unsigned bundles (serve with --require-signatures --bundle-keys KEYS).
    require_signatures: bool
    #: The channel directory the environment's sidecars read (through a static HTTP server or object store).
    channel: Path
    #: Gate `tests`: the Rego tests of the sources the bundle was built from all pass, and the bundle holds none
    #: (authoring/_tests_gate.py).
    tests: bool = False
    #: Gate `signed`: the bundle's signature verifies with one of `keys`.
    signed: bool = False
    #: Gate `replay`, or None.
    replay: ReplayGate | None = None
    #: Gate `from`: only bundles that this environment's channel has published (ran) may enter, or None.
    promote_from: str | None = None

    @property
    def gates(self) -> tuple[str, ...]:
        on = {"tests": self.tests, "signed": self.signed, "replay": self.replay is not None,
              "from": self.promote_from is not None}
        return tuple(g for g in GATES if on[g])


@dataclass(frozen=True)
class Environments:
    """Every environment of an environments file, in file order."""

    path: Path
    environments: Mapping[str, Environment]

    def get(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(self.environments)
            raise PromotionError(f"no environment {name!r} in {self.path} (environments: {known})") from None


_TOP_KEYS = {"channel_root": "where channels are published, relative to this file (default: channels)",
             "environments": "environment name → definition"}
_ENV_KEYS = {"keys": "directory of trusted public keys, one KID.pem each",
             "require_signatures": "true: the environment's sidecars refuse unsigned bundles",
             "channel": "channel directory, relative to channel_root (default: the environment's name)",
             "gates": "tests, signed, replay, from"}
_REPLAY_KEYS = ("decisions", "data_dir", "state_store", "password_file", "fail_on", "since", "limit", "entrypoint")
_REPLAY_SOURCES = ("decisions", "data_dir", "state_store")


def load_environments(path: str | Path = DEFAULT_ENVIRONMENTS, *, channel_root: str | Path | None = None
                      ) -> Environments:
    """Read and validate an environments file. Relative paths in it are relative to the file; channel_root
    (the `--channel-root` flag) replaces the file's `channel_root`."""
    file = Path(path)
    try:
        doc = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise EnvironmentsError(f"{file}: cannot be read ({exc.strerror or exc}) (hint: pass --environments, "
                                "or run from the directory holding bundles/)") from exc
    except yaml.YAMLError as exc:
        raise EnvironmentsError(f"{file}: not YAML ({exc})") from exc
    base = file.parent

    def fail(key: str, message: str) -> EnvironmentsError:
        return EnvironmentsError(f"{file}: {key}: {message}")

    top = _mapping(doc, "(top level)", fail, _TOP_KEYS)
    root_value = top.get("channel_root", "channels")
    if not isinstance(root_value, str) or not root_value:
        raise fail("channel_root", "must be a directory path")
    root = Path(channel_root) if channel_root is not None else _relative_to(base, root_value)
    envs = top.get("environments")
    if not isinstance(envs, dict) or not envs:
        raise fail("environments", "must map each environment's name (dev, staging, prod) to its definition")
    found: dict[str, Environment] = {}
    for name, raw in envs.items():
        key = f"environments.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(key, "an environment's name is a lowercase word (letters, digits, - and _)")
        found[name] = _environment(name, raw, key, base, root, fail)
    _check_links(found, fail)
    channels: dict[Path, str] = {}
    for env in found.values():
        where = env.channel.resolve()
        if where in channels:
            raise fail(f"environments.{env.name}.channel",
                       f"{env.channel} is also the channel of {channels[where]}; each environment needs its own")
        channels[where] = env.name
    return Environments(path=file, environments=found)


def _mapping(value: Any, key: str, fail: Any, known: Mapping[str, str] | Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(key, "must be a mapping")
    for k in value:
        if k not in known:
            raise fail(f"{key}.{k}" if key != "(top level)" else str(k),
                       f"unknown key (known: {', '.join(known)})")
    return value


def _environment(name: str, raw: Any, key: str, base: Path, root: Path, fail: Any) -> Environment:
    body = _mapping(raw, key, fail, _ENV_KEYS)
    keys_value = body.get("keys")
    if keys_value is not None and (not isinstance(keys_value, str) or not keys_value):
        raise fail(f"{key}.keys", "must be a directory path")
    require = body.get("require_signatures", True)
    if not isinstance(require, bool):
        raise fail(f"{key}.require_signatures", "must be true or false")
    channel_value = body.get("channel", name)
    if not isinstance(channel_value, str) or not channel_value:
        raise fail(f"{key}.channel", "must be a directory path")
    gates = _mapping(body.get("gates", {}) or {}, f"{key}.gates", fail, GATES)
    for flag in ("tests", "signed"):
        if not isinstance(gates.get(flag, False), bool):
            raise fail(f"{key}.gates.{flag}", "must be true or false")
    signed = bool(gates.get("signed", False))
    if require and not signed:
        raise fail(f"{key}.gates", "require_signatures is true, so the `signed` gate must be on "
                                   "(a bundle this environment's sidecars would refuse must not be published)")
    if (signed or require) and keys_value is None:
        raise fail(f"{key}.keys", "required: the `signed` gate checks the bundle against these keys")
    source = gates.get("from")
    if source is not None and not isinstance(source, str):
        raise fail(f"{key}.gates.from", "must name the environment promotions come from")
    replay_gate = None
    if "replay" in gates:
        replay_gate = _replay_gate(gates["replay"], f"{key}.gates.replay", base, fail)
    return Environment(
        name=name, keys=_relative_to(base, keys_value) if keys_value is not None else None,
        require_signatures=require, channel=_relative_to(root, channel_value),
        tests=bool(gates.get("tests", False)), signed=signed, replay=replay_gate, promote_from=source)


def _replay_gate(raw: Any, key: str, base: Path, fail: Any) -> ReplayGate:
    body = _mapping(raw, key, fail, _REPLAY_KEYS)
    sources = [k for k in _REPLAY_SOURCES if k in body]
    if len(sources) != 1:
        raise fail(key, "name the recorded decisions: exactly one of decisions (a JSON Lines file), data_dir "
                        "(a sidecar's data directory) or state_store (the fleet's postgresql:// store)")
    path = body[sources[0]]
    if not isinstance(path, str) or not path:
        raise fail(f"{key}.{sources[0]}", "must be a postgresql:// URL" if sources[0] == "state_store"
                   else "must be a path")
    store, password_file = _store_source(body, key, sources[0], base, fail)
    fail_on_value = body.get("fail_on", _DEFAULT_FAIL_ON)
    spelled = ",".join(fail_on_value) if isinstance(fail_on_value, list) else fail_on_value
    if not isinstance(spelled, str) or not all(isinstance(v, str) for v in
                                               (fail_on_value if isinstance(fail_on_value, list) else [])):
        raise fail(f"{key}.fail_on", "must be a list of transitions such as deny→allow")
    try:
        fail_on = parse_transitions(spelled)
    except ValueError as exc:
        raise fail(f"{key}.fail_on", str(exc)) from None
    since = body.get("since")
    if since is not None:
        try:
            parse_moment(str(since), now=datetime.now(UTC))
        except ValueError as exc:
            raise fail(f"{key}.since", str(exc)) from None
        since = str(since)
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise fail(f"{key}.limit", "must be a whole number of at least 1")
    entrypoint = body.get("entrypoint", "tollgate/decision")
    if not isinstance(entrypoint, str) or not entrypoint:
        raise fail(f"{key}.entrypoint", "must be a policy path such as tollgate/decision")
    where = _relative_to(base, path) if store is None else None
    return ReplayGate(decisions=where if sources[0] == "decisions" else None,
                      data_dir=where if sources[0] == "data_dir" else None,
                      fail_on=fail_on, since=since, limit=limit, entrypoint=entrypoint,
                      state_store=store, password_file=password_file)


def _store_source(body: Mapping[str, Any], key: str, source: str, base: Path, fail: Any
                  ) -> tuple[str | None, Path | None]:
    """The replay gate's state store URL and password file (None, None unless it reads the shared store)."""
    password = body.get("password_file")
    if source != "state_store":
        if password is not None:
            raise fail(f"{key}.password_file", "only with state_store (the password of the fleet's store)")
        return None, None
    from tollgate.state.postgres import is_postgres_url, redact

    url = str(body["state_store"])
    if not is_postgres_url(url):
        raise fail(f"{key}.state_store", f"must be a postgresql:// URL, not {redact(url)!r}")
    if redact(url) != url:
        raise fail(f"{key}.state_store", "holds a password: put it in a file named by password_file instead "
                                         "(this file is committed to version control)")
    if password is not None and (not isinstance(password, str) or not password):
        raise fail(f"{key}.password_file", "must be a path")
    return url, _relative_to(base, password) if password is not None else None


def _relative_to(base: Path, path: str) -> Path:
    """path read relative to base, without `..` detours in messages (bundles/../samples → samples)."""
    return Path(os.path.normpath(base / path))


def _check_links(envs: Mapping[str, Environment], fail: Any) -> None:
    for env in envs.values():
        if env.promote_from is None:
            continue
        key = f"environments.{env.name}.gates.from"
        if env.promote_from == env.name:
            raise fail(key, "an environment cannot be promoted from itself")
        if env.promote_from not in envs:
            raise fail(key, f"{env.promote_from!r} is not an environment (environments: {', '.join(envs)})")
        seen: list[str] = [env.name]
        step: str | None = env.promote_from
        while step is not None:
            if step in seen:
                raise fail(key, f"the `from` gates form a cycle ({' → '.join([*seen, step])}): nothing could "
                                "ever be promoted into them")
            seen.append(step)
            step = envs[step].promote_from
