"""Secret and header files a serve configuration names, read and checked (a ConfigError names the key)."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A configuration file or flag that cannot be used; the message names the key."""


def read_secret(name: str, path: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path!r} ({exc.strerror or exc})") from exc
    if not secret:
        raise ConfigError(f"{name}: {path!r} is empty")
    return secret


#: Headers an exporter sets itself; a headers file may not replace them.
OWN_HEADERS = frozenset({"content-type", "content-encoding", "content-length", "host", "user-agent"})
#: Headers the bundle poller sets itself (conditional polling, the archive as sent).
BUNDLE_HEADERS = frozenset({"if-none-match", "accept-encoding", "content-length", "host", "user-agent"})


def read_headers(name: str, path: str, *, set_by: str = "the exporter",
                  own: frozenset[str] = OWN_HEADERS) -> tuple[tuple[str, str], ...]:
    """`Name: value` lines of a headers file (blank lines and # comments skipped), checked line by line."""
    found: list[tuple[str, str]] = []
    for number, line in enumerate(read_secret(name, path).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        header, colon, value = line.partition(":")
        header, value = header.strip(), value.strip()
        if not colon or not header or not value or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in header):
            raise ConfigError(f"{name}: {path}:{number}: not a `Name: value` header line")
        if header.lower() in own:
            raise ConfigError(f"{name}: {path}:{number}: {header} is set by {set_by} itself")
        found.append((header, value))
    return tuple(found)
