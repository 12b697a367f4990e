"""The console's configuration: its own keys under `console:` in the same YAML file the sidecars read, beside
the sidecar's store keys (`data_dir`, `state_store`, ...), so one file serves `tollgate serve` and
`tollgate console` alike.

The sidecar's other top-level keys are left to the sidecar (it validates them); every key under `console:` is
the console's, and an unknown one is refused with the list of known ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tollgate.identity._people import valid_group_name
from tollgate.state import StoreSettings

#: The roles, least first. admin implies every other; operator and approver each imply viewer.
ROLES = ("viewer", "approver", "operator", "admin")
#: Without a `roles` mapping, a group named like a role grants it (a local account with --group admin is one).
DEFAULT_ROLES = {role: role for role in ROLES}
#: The top-level keys of the sidecar's config the console reads (the store, and who is in each approver group).
STORE_KEYS = ("data_dir", "state_store", "state_store_timeout", "state_store_password_file", "approver_groups")


class ConsoleConfigError(ValueError):
    """A console setting that cannot be used (the message names the key)."""


@dataclass(frozen=True)
class ConsoleConfig:
    """`tollgate console`'s settings: where it listens, how people sign in, which store it works on."""

    #: HOST:PORT the console serves on (port 0: any free one, printed in the ready line).
    listen: str = "127.0.0.1:8181"
    #: PEM certificate and key: serve HTTPS (session cookies are then Secure). Both or neither.
    tls_cert: str = ""
    tls_key: str = ""
    #: Seconds a sign-in lasts (from sign-in, not from the last page); sign-out ends it sooner.
    session_ttl: float = 8 * 3600.0
    #: Group → role (viewer, approver, operator, admin): what each group a person is in lets them do.
    roles: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    #: The console's address as people reach it (https://console.example.com), for links in notifications and
    #: for the Origin every form's POST must carry; "" is the address a request came to.
    base_url: str = ""
    #: Failed sign-ins allowed per account name, and per client address, within login_window seconds.
    login_attempts_per_user: int = 5
    login_attempts_per_address: int = 20
    login_window: float = 900.0
    #: OpenID Connect sign-in (issuer, client_id, ...; C2's section, docs/CONSOLE.md).
    oidc: dict[str, Any] = field(default_factory=dict)
    #: A trusted reverse proxy's identity header and the addresses it is accepted from (docs/CONSOLE.md).
    trusted_proxy: dict[str, Any] = field(default_factory=dict)
    #: The state store, as the sidecars reach it.
    store: StoreSettings = field(default_factory=StoreSettings)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def secure_cookies(self) -> bool:
        """Cookies marked Secure: the console serves HTTPS, or people reach it through an https base_url."""
        return self.tls or self.base_url.startswith("https://")

    def validate(self) -> ConsoleConfig:
        host, colon, port = self.listen.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            raise ConsoleConfigError(f"listen: must be HOST:PORT, not {self.listen!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConsoleConfigError("tls_cert and tls_key go together (the certificate and its key)")
        for name in ("tls_cert", "tls_key"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise ConsoleConfigError(f"{name}: {getattr(self, name)!r} is not a readable file")
        if not (math.isfinite(self.session_ttl) and 60 <= self.session_ttl <= 30 * 86400):
            raise ConsoleConfigError(f"session_ttl: must be from 60 seconds to 30 days, not {self.session_ttl!r}")
        if not isinstance(self.roles, dict):
            raise ConsoleConfigError(f"roles: must map group names to roles, got {self.roles!r}")
        for group, role in self.roles.items():
            if not isinstance(group, str) or not valid_group_name(group):
                raise ConsoleConfigError(f"roles: {group!r} is not a group name")
            if role not in ROLES:
                raise ConsoleConfigError(f"roles: {group}: {role!r} is not one of {', '.join(ROLES)}")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConsoleConfigError(f"base_url: must start with http:// or https://, not {self.base_url!r}")
        for name in ("login_attempts_per_user", "login_attempts_per_address"):
            if getattr(self, name) < 1:
                raise ConsoleConfigError(f"{name}: must be 1 or more")
        if not (math.isfinite(self.login_window) and self.login_window > 0):
            raise ConsoleConfigError("login_window: must be a number of seconds above 0")
        return self


#: The keys under `console:` (every ConsoleConfig field but the store, which is top-level).
CONSOLE_KEYS = tuple(f.name for f in fields(ConsoleConfig) if f.name != "store")


def load_console_config(path: str | None, overrides: dict[str, Any]) -> ConsoleConfig:
    """Defaults, then the file at path (its `console:` section and the store keys), then overrides (flags that
    were given: console keys, or store keys by their names)."""
    console: dict[str, Any] = {}
    store: dict[str, Any] = {}
    if path:
        doc = _read(path)
        section = doc.get("console") or {}
        if not isinstance(section, dict):
            raise ConsoleConfigError(f"config {path}: console: must be a mapping of keys to values")
        for key, value in section.items():
            name = str(key).replace("-", "_")
            if name not in CONSOLE_KEYS:
                raise ConsoleConfigError(f"config {path}: console: unknown key {key!r}; known keys: "
                                         f"{', '.join(sorted(CONSOLE_KEYS))}")
            console[name] = value
        store.update({k: doc[k] for k in STORE_KEYS if k in doc})
        store.update({k: doc[k.replace("_", "-")] for k in STORE_KEYS if k.replace("_", "-") in doc})
    for name, value in overrides.items():
        if value is not None:
            (store if name in STORE_KEYS else console)[name] = value
    try:
        settings = StoreSettings(**store)
        if settings.state_store and not settings.state_store.startswith(("postgresql://", "postgres://")):
            raise ConsoleConfigError("state_store: must be \"\" (SQLite in data_dir) or a postgresql:// URL")
        if "session_ttl" in console:
            console["session_ttl"] = float(console["session_ttl"])
        return dataclasses.replace(ConsoleConfig(**console), store=settings).validate()
    except TypeError as exc:
        raise ConsoleConfigError(f"config: {exc}") from None


def _read(path: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConsoleConfigError(f"config {path}: cannot read ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConsoleConfigError(f"config {path}: must be a mapping of keys to values")
    return doc
