"""OpenID Connect sign-in against a real `tollgate console` and a STAND-IN identity provider: a small real HTTP
server in this test (no real IdP here) with a discovery document, a JWKS and real RS256 ID tokens, which checks
the PKCE verifier like a provider does. Happy path; then each way a token or a callback is refused: wrong
audience, expired, bad signature, a nonce replayed from another sign-in, a state mismatch, alg none (and HS256
keyed with the public key), a callback used twice, and a rotated key found by refetching the JWKS."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.console.conftest import Console, ConsoleFactory
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, StandInProvider, b64, running_provider
from tollgate.identity._oidc import OidcConfigError, OidcSettings
from tollgate.state import LocalAudit, StateStore
from tollgate.state._audit import AuditEntry


@pytest.fixture
def idp() -> Iterator[StandInProvider]:
    yield from running_provider()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def console(console_factory: ConsoleFactory, data_dir: Path, idp: StandInProvider, tmp_path: Path) -> Console:
    secret = tmp_path / "client_secret"
    secret.write_text(CLIENT_SECRET + "\n")
    return console_factory(data_dir=data_dir, config={"console": {"oidc": {
        "issuer": idp.url, "client_id": CLIENT_ID, "client_secret_file": str(secret), "groups_claim": "groups",
        "clock_skew": 30}}})


def sign_in(console: Console, *, tamper_state: bool = False) -> tuple[httpx2.Client, httpx2.Response]:
    """The browser's round trip: console → provider → console's callback. The client (with its cookies) and the
    callback's answer."""
    http = httpx2.Client(base_url=console.url, timeout=30)
    start = http.get("/signin/oidc", params={"next": "/audit"})
    assert start.status_code == 303, start.text
    at_idp = httpx2.get(start.headers["location"], timeout=30)
    assert at_idp.status_code == 302, at_idp.text
    back = urlsplit(at_idp.headers["location"])
    query = parse_qs(back.query)
    if tamper_state:
        query["state"] = ["someone-elses-state"]
    answer = http.get(f"{back.path}?{urlencode({k: v[0] for k, v in query.items()})}")
    return http, answer


def audit(data_dir: Path) -> list[AuditEntry]:
    store = StateStore(data_dir / "state.db")
    try:
        return asyncio.run(LocalAudit(store).entries(limit=100))
    finally:
        store.close()


def test_a_person_signs_in_through_the_provider_with_the_groups_of_its_claim(console: Console,
                                                                            data_dir: Path) -> None:
    signin = httpx2.get(f"{console.url}/signin", timeout=30)
    assert 'href="/signin/oidc?next=/"' in signin.text
    http, answer = sign_in(console)
    assert answer.status_code == 303 and answer.headers["location"] == "/audit", answer.text
    home = http.get("/")
    assert home.status_code == 200 and "rita@example.com" in home.text
    (entry,) = [e for e in audit(data_dir) if e.action == "signin"]
    assert (entry.actor, entry.via) == ("rita@example.com", "oidc")
    assert "approver" in entry.detail and "release-managers" in entry.detail


def _alg_none(claims: dict[str, Any]) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def _hs256_with_the_public_key(idp: StandInProvider) -> Callable[[dict[str, Any]], str]:
    public = idp.keys["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def make(claims: dict[str, Any]) -> str:
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
        body = b64(json.dumps(claims).encode())
        signature = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{b64(signature)}"

    return make


REFUSED: list[Any] = [
    pytest.param(lambda idp: idp.claims.update(aud="another-client"), "Audience doesn't match", id="wrong-audience"),
    pytest.param(lambda idp: idp.claims.update(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
                 "the token has expired (exp)", id="expired"),
    pytest.param(lambda idp: idp.claims.update(iss="https://evil.example"), "Invalid issuer", id="wrong-issuer"),
    pytest.param(lambda idp: idp.claims.update(aud=[CLIENT_ID, "another-client"]), "several audiences and no azp",
                 id="several-audiences-no-azp"),
    pytest.param(lambda idp: setattr(idp, "token", lambda c: idp.sign(
        c, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))),
        "Signature verification failed", id="bad-signature"),
    pytest.param(lambda idp: setattr(idp, "token", _alg_none), "alg 'none' is not allowed", id="alg-none"),
    pytest.param(lambda idp: setattr(idp, "token", _hs256_with_the_public_key(idp)), "alg 'HS256' is not allowed",
                 id="hs256-with-the-public-key"),
]


@pytest.mark.parametrize(("spoil", "why"), REFUSED)
def test_a_token_that_does_not_verify_signs_no_one_in(console: Console, idp: StandInProvider, data_dir: Path,
                                                     spoil: Callable[[StandInProvider], None], why: str) -> None:
    spoil(idp)
    http, answer = sign_in(console)
    assert answer.status_code == 401 and "Sign-in refused: ID token refused" in answer.text, answer.text
    assert why in html.unescape(answer.text)
    assert http.get("/").status_code == 303  # no session: back to sign-in
    failed = [e for e in audit(data_dir) if e.action == "signin.failed"]
    assert failed and failed[0].via == "oidc" and why in failed[0].detail
    assert not [e for e in audit(data_dir) if e.action == "signin"]


def test_a_nonce_from_another_sign_in_is_refused(console: Console, idp: StandInProvider) -> None:
    sign_in(console)  # an earlier sign-in: its nonce is what a replayed token would carry
    earlier = idp.nonces[-1]
    idp.claims["nonce"] = earlier
    _, answer = sign_in(console)
    assert answer.status_code == 401 and "nonce does not match this sign-in" in answer.text, answer.text


def test_a_state_that_is_not_this_browsers_is_refused(console: Console) -> None:
    http, answer = sign_in(console, tamper_state=True)
    assert answer.status_code == 401 and "state does not match" in answer.text
    assert http.get("/").status_code == 303


def test_a_callback_is_used_once_and_only_by_the_browser_that_started_it(console: Console,
                                                                         idp: StandInProvider) -> None:
    http = httpx2.Client(base_url=console.url, timeout=30)
    start = http.get("/signin/oidc")
    back = urlsplit(httpx2.get(start.headers["location"], timeout=30).headers["location"])
    callback = f"{back.path}?{back.query}"
    stranger = httpx2.Client(base_url=console.url, timeout=30).get(callback)  # no pre-session cookie
    assert stranger.status_code == 401 and "no sign-in was started from this browser" in stranger.text
    # The stranger's try took nothing from the real browser, whose callback still works once.
    assert http.get(callback).status_code == 303
    again = http.get(callback)
    assert again.status_code == 401 and "no sign-in was started" in again.text


def test_a_rotated_key_is_found_by_refetching_the_jwks(console: Console, idp: StandInProvider) -> None:
    assert sign_in(console)[1].status_code == 303
    fetched = idp.jwks_fetches
    idp.rotate("k2")
    assert sign_in(console)[1].status_code == 303
    assert idp.jwks_fetches == fetched + 1


@pytest.mark.parametrize(("section", "message"), [
    ({"client_id": "c"}, "oidc.issuer: required"),
    ({"issuer": "ftp://idp", "client_id": "c"}, "must be an https:// URL"),
    ({"issuer": "https://idp", "client_id": "c", "algorithms": ["HS256"]}, "'HS256' is not allowed"),
    ({"issuer": "https://idp", "client_id": "c", "algorithms": ["none"]}, "'none' is not allowed"),
    ({"issuer": "https://idp", "client_id": "c", "scopes": ["email"]}, "scopes: must include openid"),
    ({"issuer": "https://idp", "client_id": "c", "secret": "x"}, "unknown key 'secret'"),
], ids=["no-issuer", "not-https", "hs256", "none", "no-openid-scope", "unknown-key"])
def test_an_oidc_section_that_cannot_be_used_is_refused_naming_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(OidcConfigError, match=message):
        OidcSettings.parse(section)
