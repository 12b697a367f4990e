"""Sign-in through a trusted reverse proxy, against a real `tollgate console` and real connections from two
loopback addresses: the console listens on 127.0.0.1 and believes the identity headers only from 127.0.0.2 (the
"proxy"); the same headers from 127.0.0.1 (anyone else) are ignored and audited."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.console.conftest import Console, ConsoleFactory
from tollgate.console import ConsoleConfigError
from tollgate.console._proxy import ProxySettings
from tollgate.state import LocalAudit, StateStore
from tollgate.state._audit import AuditEntry

PROXY, STRANGER = "127.0.0.2", "127.0.0.1"
HEADERS = {"X-Auth-User": "rita", "X-Auth-Groups": "approver, release-managers"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def console(console_factory: ConsoleFactory, data_dir: Path) -> Iterator[Console]:
    yield console_factory(data_dir=data_dir, config={"console": {"trusted_proxy": {
        "addresses": [f"{PROXY}/32", "10.20.0.0/16"], "user_header": "X-Auth-User", "groups_header": "X-Auth-Groups"}}})


def client(console: Console, source: str) -> httpx2.Client:
    """An HTTP client whose connections come from source (a loopback address of its own)."""
    return httpx2.Client(base_url=console.url, headers={"origin": console.url}, timeout=30,
                         transport=httpx2.HTTPTransport(local_address=source))


def audit(data_dir: Path) -> list[AuditEntry]:
    store = StateStore(data_dir / "state.db")
    try:
        return asyncio.run(LocalAudit(store).entries(limit=100))
    finally:
        store.close()


def test_the_proxys_identity_header_signs_the_person_in_with_their_groups(console: Console) -> None:
    with client(console, PROXY) as http:
        home = http.get("/", headers=HEADERS)
    assert home.status_code == 200, home.text
    assert "rita" in home.text and "approver" in home.text


def test_the_same_header_from_anyone_else_is_ignored_and_audited(console: Console, data_dir: Path) -> None:
    with client(console, STRANGER) as http:
        refused = [http.get("/", headers={**HEADERS, "X-Auth-Groups": "admin"}) for _ in range(3)]
    for answer in refused:  # treated as no identity at all: the sign-in page
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin")
    entries = [e for e in audit(data_dir) if e.action == "proxy.refused"]
    assert len(entries) == 1, entries  # once a minute per address: a stranger cannot flood the trail
    (entry,) = entries
    assert (entry.actor, entry.via, entry.source_address) == ("rita", "proxy", STRANGER)
    assert "not the proxy's" in entry.detail


def test_a_post_through_the_proxy_needs_the_persons_csrf_token(console: Console) -> None:
    with client(console, PROXY) as http:
        page = http.get("/", headers=HEADERS)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        forged = http.post("/signout", headers=HEADERS, data={})
        assert forged.status_code == 403
        # Another person's token (the proxy naming someone else) is not this person's.
        other = http.get("/", headers={"X-Auth-User": "sam", "X-Auth-Groups": "approver"})
        other_token = re.search(r'name="csrf_token" value="([^"]+)"', other.text)
        assert other_token and other_token.group(1) != token.group(1)
        assert http.post("/signout", headers=HEADERS, data={"csrf_token": other_token.group(1)}).status_code == 403
        assert http.post("/signout", headers=HEADERS, data={"csrf_token": token.group(1)}).status_code == 303


def test_a_header_naming_no_person_signs_no_one_in(console: Console) -> None:
    with client(console, PROXY) as http:
        for name in ("<script>alert(1)</script>", "rita smith", ""):
            answer = http.get("/", headers={"X-Auth-User": name})
            assert answer.status_code == 303, (name, answer.text)


@pytest.mark.parametrize(("section", "message"), [
    ({}, "addresses: required"),
    ({"addresses": ["proxy.internal"]}, "'proxy.internal' is not an address or CIDR"),
    ({"addresses": ["127.0.0.2"], "user_header": "X User"}, "user_header: 'X User' is not a header name"),
    ({"addresses": ["127.0.0.2"], "trust": "all"}, "unknown key 'trust'"),
], ids=["no-addresses", "a-hostname", "bad-header", "unknown-key"])
def test_a_trusted_proxy_section_that_cannot_be_used_is_refused_naming_the_key(section: dict[str, object],
                                                                              message: str) -> None:
    with pytest.raises(ConsoleConfigError, match=re.escape(message)):
        ProxySettings.parse(section)
