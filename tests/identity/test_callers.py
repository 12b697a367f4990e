"""Caller identity: what a transport proves becomes a Caller, and the callers mapping says what it may claim."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.identity import ANONYMOUS, Caller, CallerMap, CallerResolver, IdentityConfigError, certificate_caller

SPIFFE = "spiffe://acme/agents/code-reviewer"


def test_a_client_certificate_names_its_spiffe_id_and_other_names_as_aliases() -> None:
    caller = certificate_caller({"transport_security_type": [b"ssl"], "peer_spiffe_id": [SPIFFE.encode()],
                                 "peer_uri": [SPIFFE.encode()], "peer_dns": [b"reviewer.acme.internal"],
                                 "x509_common_name": [b"reviewer"],
                                 "x509_subject_alternative_name": [SPIFFE.encode(), b"reviewer.acme.internal"]})
    assert caller is not None
    assert (caller.method, caller.subject) == ("mtls", SPIFFE)
    assert caller.aliases == ("dns:reviewer.acme.internal", "cn:reviewer")
    assert caller.auth_input()["spiffe_id"] == SPIFFE


def test_a_certificate_without_a_uri_is_named_by_its_dns_name_then_its_common_name() -> None:
    by_dns = certificate_caller({"peer_dns": [b"gw.acme"], "x509_common_name": [b"gw"]})
    by_cn = certificate_caller({"x509_common_name": [b"gw"]})
    assert (by_dns and by_dns.subject, by_cn and by_cn.subject) == ("dns:gw.acme", "cn:gw")
    assert certificate_caller({}) is None


def test_the_relay_peer_address_is_a_uds_caller_and_anything_else_is_anonymous() -> None:
    resolver = CallerResolver(relay_prefix="unix-abstract:tollgate-relay.7.ab12/")
    caller = resolver.transport(peer="unix-abstract:tollgate-relay.7.ab12/1000.100.4242.7", auth_context={})
    assert caller == Caller("uds", "uid:1000", {"uid": 1000, "gid": 100, "pid": 4242}, ("gid:100",))
    assert resolver.transport(peer="unix:/elsewhere/1000.100.4242.7", auth_context={}) is ANONYMOUS
    assert resolver.transport(peer="unix-abstract:tollgate-relay.8.cd34/1000.100.4242.7", auth_context={}) is ANONYMOUS
    assert resolver.transport(peer="unix:", auth_context={}) is ANONYMOUS
    assert resolver.transport(peer="ipv4:127.0.0.1:5000", auth_context={}) is ANONYMOUS


def test_a_token_on_a_server_without_token_keys_is_refused_not_ignored() -> None:
    caller = CallerResolver().resolve(peer="", auth_context={}, token="eyJ...")
    assert caller.error.startswith("caller token: this server verifies no caller tokens")


CALLERS = CallerMap.parse([
    {"id": SPIFFE, "agents": ["code-reviewer"], "teams": ["payments"]},
    {"id": "gid:100", "agents": ["*"], "users": ["*"], "teams": ["*"], "workflows": ["*"]},
    {"id": "uid:1000", "agents": ["data-analyst"]},
])
REVIEWER = Caller("mtls", SPIFFE)


@pytest.mark.parametrize(("caller", "principal", "refused"), [
    (REVIEWER, {"agent_id": "code-reviewer"}, ""),
    (REVIEWER, {"agent_id": "code-reviewer", "team": "payments"}, ""),
    (REVIEWER, {"agent_id": "release-bot"}, "may not speak for agent_id 'release-bot'"),
    (REVIEWER, {"agent_id": "code-reviewer", "team": "platform"}, "may not speak for team 'platform'"),
    (REVIEWER, {"agent_id": "code-reviewer", "user": "alice"}, "may not speak for user 'alice'"),
    (Caller("uds", "uid:1000", aliases=("gid:100",)), {"agent_id": "anything", "user": "bob"}, ""),
    (Caller("uds", "uid:1000", aliases=("gid:5",)), {"agent_id": "data-analyst"}, ""),
    (Caller("uds", "uid:1000", aliases=("gid:5",)), {"agent_id": "code-reviewer"}, "agent_id 'code-reviewer'"),
    (Caller("uds", "uid:2000", aliases=("gid:5",)), {"agent_id": "code-reviewer"}, "is not listed in callers"),
    (ANONYMOUS, {"agent_id": "code-reviewer"}, "an unauthenticated caller is not listed"),
], ids=["own-agent", "own-team", "other-agent", "other-team", "unlisted-user", "group-wildcard",
        "uid-entry", "uid-entry-other-agent", "unlisted", "anonymous"])
def test_callers_mapping_is_deny_by_default_with_explicit_wildcards(caller: Caller, principal: dict[str, Any],
                                                                    refused: str) -> None:
    answer = CALLERS.check(caller, principal)
    assert (refused in answer) if refused else answer == ""


def test_an_empty_mapping_refuses_no_one() -> None:
    assert CallerMap.parse(None).check(ANONYMOUS, {"agent_id": "x"}) == ""
    assert not CallerMap.parse([])


@pytest.mark.parametrize(("raw", "message"), [
    ({"id": "uid:1"}, "callers: must be a list"),
    ([{"id": "root"}], r"callers\[0\]\.id: 'root' is not a caller identity"),
    ([{"id": "uid:1", "teams": [""]}], r"callers\[0\]\.teams: must be a list of names"),
    ([{"id": "uid:1", "roles": []}], r"callers\[0\]: unknown key 'roles'"),
], ids=["not-a-list", "bad-id", "empty-name", "unknown-key"])
def test_bad_callers_entries_name_the_entry_and_key(raw: Any, message: str) -> None:
    with pytest.raises(IdentityConfigError, match=message):
        CallerMap.parse(raw)


def test_a_verified_token_is_remembered_until_it_expires(tmp_path: Any) -> None:
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tollgate.identity import TOKEN_LEEWAY, TokenVerifier

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k1.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    verifier = TokenVerifier.from_config(str(tmp_path), issuer="https://idp", audience="tollgate")

    def token(exp: float) -> str:
        return jwt.encode({"iss": "https://idp", "aud": "tollgate", "sub": "agent-7", "exp": int(exp)}, key,
                          algorithm="ES256", headers={"kid": "k1"})

    fresh = token(time.time() + 60)
    first = verifier.verify(fresh)
    assert first.subject == "jwt:agent-7"
    assert verifier.verify(fresh) is first  # remembered: no second signature check
    # Expired past the leeway: refused, and a refusal is never remembered.
    stale = token(time.time() - TOKEN_LEEWAY - 5)
    assert "expired" in verifier.verify(stale).error
    assert "expired" in verifier.verify(stale).error


def test_the_relay_directory_lives_in_the_data_dir_and_a_dead_servers_is_removed(tmp_path: Any) -> None:
    import os
    import shutil

    from tollgate.identity import private_dir

    gone = tmp_path / "relay.999999999"  # past any pid_max: no such process
    gone.mkdir()
    (gone / "grpc.sock").write_text("")
    made = private_dir(tmp_path)
    assert made == tmp_path / f"relay.{os.getpid()}"
    assert made.stat().st_mode & 0o777 == 0o700
    assert not gone.exists()
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    elsewhere = private_dir(deep)
    assert elsewhere.parent != deep  # too long for a socket address: a private directory in $TMPDIR
    shutil.rmtree(elsewhere)


def test_a_remembered_token_is_forgotten_when_the_verifier_clock_passes_its_exp(tmp_path: Any) -> None:
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tollgate.clock import ManualClock
    from tollgate.identity import TOKEN_LEEWAY, TokenVerifier

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k1.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    clock = ManualClock()
    verifier = TokenVerifier.from_config(str(tmp_path), issuer="https://idp", audience="tollgate", clock=clock)
    fresh = jwt.encode({"iss": "https://idp", "aud": "tollgate", "sub": "agent-7", "exp": int(time.time() + 600)},
                       key, algorithm="ES256", headers={"kid": "k1"})
    first = verifier.verify(fresh)
    assert verifier.verify(fresh) is first
    clock.advance(600 + TOKEN_LEEWAY + 1)
    # Past its exp on the verifier's clock: checked again (and PyJWT, on the system clock, still accepts it).
    again = verifier.verify(fresh)
    assert again is not first and again.subject == "jwt:agent-7"


def test_a_certificate_whose_names_map_to_different_principals_is_refused_by_the_resolver() -> None:
    callers = CallerMap.parse([{"id": SPIFFE, "agents": ["code-reviewer"]},
                               {"id": "spiffe://acme/agents/release-bot", "agents": ["release-bot"]},
                               {"id": "dns:reviewer.acme.internal", "agents": ["code-reviewer"]}])
    resolver = CallerResolver(callers=callers)

    def caller(*uris: str, dns: str = "") -> Caller:
        return resolver.resolve(peer="", auth_context={
            "transport_security_type": [b"ssl"], "peer_uri": [u.encode() for u in uris],
            "x509_subject_alternative_name": [u.encode() for u in uris], "peer_dns": [dns.encode()] if dns else []})

    both = caller(SPIFFE, "spiffe://acme/agents/release-bot")
    assert both.subject == "" and "names 2 callers entries that may claim different principals" in both.error
    same = caller(SPIFFE, dns="reviewer.acme.internal")
    assert (same.subject, same.error) == (SPIFFE, "")
    assert caller(SPIFFE, "spiffe://acme/unlisted").error == ""
    # A Unix-socket peer is one process: its uid and gid entries still add up, as before.
    assert CallerResolver(callers=callers, relay_prefix="r/").resolve(peer="r/1.2.3.4", auth_context={}).error == ""


# -- the verified-token cache: bounded, expiring on the verifier's clock, forgotten on a key change ---------


def _signer(tmp_path: Any, kid: str = "k1") -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / f"{kid}.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def _token(key: Any, sub: str, *, kid: str = "k1", ttl: float = 600) -> str:
    import time

    import jwt

    return jwt.encode({"iss": "https://idp", "aud": "tollgate", "sub": sub, "exp": int(time.time() + ttl)}, key,
                      algorithm="ES256", headers={"kid": kid})


def _counting(verifier: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature the verifier checks, in order."""
    checked: list[str] = []
    real = verifier._verify

    def counted(token: str) -> Any:
        checked.append(token)
        return real(token)

    monkeypatch.setattr(verifier, "_verify", counted)
    return checked


def test_the_token_cache_is_bounded_and_drops_the_least_recently_used(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tollgate.clock import ManualClock
    from tollgate.identity import TokenVerifier, _callers

    monkeypatch.setattr(_callers, "TOKEN_CACHE_SIZE", 3)
    key = _signer(tmp_path)
    verifier = TokenVerifier.from_config(str(tmp_path), issuer="https://idp", audience="tollgate",
                                         clock=ManualClock())
    checked = _counting(verifier, monkeypatch)
    tokens = [_token(key, f"agent-{i}") for i in range(4)]
    for t in tokens[:3]:
        verifier.verify(t)
    verifier.verify(tokens[0])  # used again: the most recent now
    verifier.verify(tokens[3])  # a fourth: the least recently used (agent-1) goes
    assert verifier.remembered == 3
    assert checked == [*tokens[:3], tokens[3]]
    verifier.verify(tokens[0])
    verifier.verify(tokens[1])
    assert checked[-1] == tokens[1] and len(checked) == 5  # agent-0 was remembered, agent-1 checked again
    # A huge token is remembered by its digest: the cache holds no copy of it.
    big = _token(key, "agent-" + "x" * 200_000)
    assert verifier.verify(big).subject.startswith("jwt:agent-xxx")
    assert all(len(k) == 32 for k in verifier._verified)


def test_a_changed_key_directory_forgets_every_remembered_token(tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tollgate.clock import ManualClock
    from tollgate.identity import TokenVerifier
    from tollgate.identity._callers import KEY_CHECK_SECONDS

    key = _signer(tmp_path, "k1")
    clock = ManualClock()
    verifier = TokenVerifier.from_config(str(tmp_path), issuer="https://idp", audience="tollgate", clock=clock)
    old = _token(key, "agent-7", kid="k1")
    assert verifier.verify(old).subject == "jwt:agent-7"
    # The key is revoked: k1.pem removed, k2.pem trusted in its place.
    (tmp_path / "k1.pem").unlink()
    rotated = _signer(tmp_path, "k2")
    assert verifier.verify(old).subject == "jwt:agent-7"  # until the directory is looked at again
    clock.advance(KEY_CHECK_SECONDS)
    refused = verifier.verify(old)
    assert refused.subject == "" and "kid 'k1' is not a trusted key (trusted: k2)" in refused.error
    assert verifier.verify(_token(rotated, "agent-8", kid="k2")).subject == "jwt:agent-8"
    assert verifier.remembered == 1
    # A directory that no longer loads refuses every token, remembered or not, and says why.
    (tmp_path / "k2.pem").write_text("not a key")
    clock.advance(KEY_CHECK_SECONDS)
    broken = verifier.verify(_token(rotated, "agent-8", kid="k2"))
    assert broken.subject == "" and "token_keys" in broken.error
    assert verifier.remembered == 0


def test_a_remembered_token_expires_on_the_verifier_clock_not_before(tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tollgate.clock import ManualClock
    from tollgate.identity import TOKEN_LEEWAY, TokenVerifier

    key = _signer(tmp_path)
    clock = ManualClock()
    verifier = TokenVerifier.from_config(str(tmp_path), issuer="https://idp", audience="tollgate", clock=clock)
    checked = _counting(verifier, monkeypatch)
    token = _token(key, "agent-7", ttl=60)
    verifier.verify(token)
    clock.advance(30)
    verifier.verify(token)
    assert len(checked) == 1 and verifier.remembered == 1
    clock.advance(30 + TOKEN_LEEWAY + 1)
    assert verifier.remembered == 0
