"""Per-person identity on the API, against real sidecars: ApprovalService takes the approver from the caller's
credential (a person's own token, a client certificate mapped to a person), never from a declared `by`; the shared
admin token acts as `admin-token`, never as a person; every approval and kill-switch action is audited.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from tests.conftest import TOLLGATE, Server, start_server, tool_request
from tests.oidc_provider import CLIENT_ID, running_provider
from tests.people import People, bearer, issue_token
from tests.pki import TestCA
from tollgate.state import LocalAudit, StateStore
from tollgate.state._audit import AuditEntry
from tollgate.state._tokens import LocalPersonTokens
from tollgate.state.postgres import PgOptions, PgStore
from tollgate.state.postgres._tokens import PgPersonTokens
from tollgate.v1 import admin_pb2, admin_pb2_grpc, approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb

#: Each test reads time on a server (`clock`), but those marked so below: their token or time left is
#: worked out by a second process on the real clock (the CLI, the stand-in identity provider) while the year-end
#: pass starts the server's clock weeks ahead, which no deployment does.

# admin-token is listed in a group on purpose: where a policy (or its groups) names it, automation may decide.
GROUPS = {"release-managers": ["rita", "release-bot"], "sre-oncall": ["sam"], "automation": ["admin-token"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("person-identity") / "data", config={"approver_groups": GROUPS})
    yield started
    started.terminate()


@pytest.fixture(scope="module")
def people(server: Server) -> People:
    return People(server.data_dir)


def _stub(server: Server) -> approval_pb2_grpc.ApprovalServiceStub:
    return approval_pb2_grpc.ApprovalServiceStub(server.channel)


def _ask(server: Server, pr: int, *, agent: str = "release-bot") -> str:
    asked = server.authorize(tool_request(agent, "github", "merge_pull_request",
                                          {"owner": "acme", "repo": "app", "pullNumber": pr}, session_id=f"s-{pr}"))
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL, asked
    return asked.approval_id


def _decide(server: Server, approval_id: str, metadata: list[tuple[str, str]], *, by: str = "",
            approve: bool = True, reason: str = "reviewed") -> approval_pb2.Approval:
    decided: approval_pb2.Approval = _stub(server).Decide(
        approval_pb2.DecideRequest(id=approval_id, approve=approve, by=by, reason=reason), timeout=10,
        metadata=metadata)
    return decided


def _status(server: Server, approval_id: str) -> str:
    found = _stub(server).GetApproval(approval_pb2.GetApprovalRequest(id=approval_id), timeout=10,
                                      metadata=server.admin_metadata)
    return str(found.status)


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def _audit(data_dir: Path, *, actor: str = "") -> list[AuditEntry]:
    store = StateStore(data_dir / "state.db")
    try:
        return asyncio.run(LocalAudit(store).entries(limit=500, actor=actor))
    finally:
        store.close()


@pytest.mark.clock
def test_a_person_decides_as_the_person_their_token_names(server: Server, people: People) -> None:
    approval_id = _ask(server, 1)
    decided = _decide(server, approval_id, people.metadata("rita"), reason="release 1.2")
    assert (decided.status, decided.decided_by) == ("approved", "rita")
    allowed = tool_request("release-bot", "github", "merge_pull_request",
                           {"owner": "acme", "repo": "app", "pullNumber": 1}, session_id="s-1")
    allowed.approval_id = approval_id
    answer = server.authorize(allowed)
    assert answer.decision == pb.DECISION_ALLOW and "approved by rita" in answer.reasons[0].message


@pytest.mark.parametrize(("by", "message"), [
    ("sam", "by: 'sam' is not the caller: the approver is taken from the credential, and your credential (token) "
            "names rita"),
    ("group:release-managers", "by: 'group:release-managers' is not the caller"),
], ids=["another-person", "a-group"])
@pytest.mark.clock
def test_a_declared_by_naming_anyone_else_is_refused_and_nothing_is_decided(server: Server, people: People,
                                                                            by: str, message: str) -> None:
    approval_id = _ask(server, 2 + len(by))
    refused = _refused(lambda: _decide(server, approval_id, people.metadata("rita"), by=by))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and message in str(refused.details())
    assert _status(server, approval_id) == "pending"
    # Declaring one's own name is what older clients do: accepted.
    assert _decide(server, approval_id, people.metadata("rita"), by="rita").decided_by == "rita"


@pytest.mark.clock
def test_the_admin_token_never_decides_as_a_person(server: Server) -> None:
    approval_id = _ask(server, 20)
    refused = _refused(lambda: _decide(server, approval_id, server.admin_metadata, by="rita"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "by: 'rita' is not the caller" in str(refused.details())
    assert "the shared admin token decides as admin-token" in str(refused.details())
    # As itself it is one more name, held to the approvers like any: this policy's approvers do not name it.
    refused = _refused(lambda: _decide(server, approval_id, server.admin_metadata))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin-token is not an approver of" in str(refused.details())
    assert _status(server, approval_id) == "pending"


@pytest.mark.clock
def test_the_admin_token_decides_as_admin_token_where_a_group_names_it(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", config={"approver_groups": {"release-managers": ["admin-token"]}})
    try:
        approval_id = _ask(server, 21)
        decided = _decide(server, approval_id, server.admin_metadata, reason="nightly release job")
        assert (decided.status, decided.decided_by) == ("approved", "admin-token")
    finally:
        server.terminate()


@pytest.mark.clock
def test_an_agents_own_user_token_cannot_approve_it(server: Server, people: People) -> None:
    asked = server.authorize(tool_request("release-bot", "github", "merge_pull_request", {"pullNumber": 30},
                                          session_id="s-30", user="rita"))
    refused = _refused(lambda: _decide(server, asked.approval_id, people.metadata("rita")))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "rita cannot decide a request made by or for itself (principal user)" in str(refused.details())
    assert _decide(server, asked.approval_id, people.metadata("sam")).decided_by == "sam"


@pytest.mark.clock
def test_unknown_expired_and_revoked_tokens_authenticate_no_one(server: Server) -> None:
    approval_id = _ask(server, 40)
    short = issue_token(server.data_dir, "rita", ttl=timedelta(hours=1))
    store = StateStore(server.data_dir / "state.db")
    try:
        tokens = LocalPersonTokens(store)
        issued = asyncio.run(tokens.issue("rita"))
        assert asyncio.run(tokens.revoke(issued.token.id))
        revoked = issued.secret
    finally:
        store.close()
    server.advance_clock(2 * 3600)
    for token in ("tgp_" + "A" * 43, short, revoked):
        refused = _refused(lambda t=token: _decide(server, approval_id, bearer(t)))  # type: ignore[misc]
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "this person token is not valid (unknown, expired or revoked)" in str(refused.details())
    assert _status(server, approval_id) == "expired"  # never decided: its own TTL ran out in the two hours


@pytest.mark.clock
def test_a_persons_token_is_no_admin_credential(server: Server, people: People) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    kill = admin_pb2.KillRequest(scope="agent", value="release-bot", reason="INC-1", by="rita")
    refused = _refused(lambda: admin.Kill(kill, timeout=10, metadata=people.metadata("rita")))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "rita (token) is a person's credential; AdminService needs the admin token" in str(refused.details())
    assert not admin.ListKills(admin_pb2.ListKillsRequest(), timeout=10, metadata=server.admin_metadata).kill_switches


@pytest.mark.clock
def test_every_decision_and_kill_switch_change_is_audited_with_who_how_and_where(server: Server,
                                                                                 people: People) -> None:
    approval_id = _ask(server, 50)
    _refused(lambda: _decide(server, approval_id, people.metadata("mallory")))
    _decide(server, approval_id, people.metadata("sam"), approve=False, reason="not during the freeze")
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    admin.Kill(admin_pb2.KillRequest(scope="session", value="s-audit", reason="INC-9", by="ops"), timeout=10,
               metadata=server.admin_metadata)
    admin.Revive(admin_pb2.ReviveRequest(scope="session", value="s-audit", by="ops", reason="fixed"), timeout=10,
                 metadata=server.admin_metadata)
    entries = [e for e in _audit(server.data_dir) if e.target in (approval_id, "session=s-audit")]
    seen = [(e.actor, e.via, e.action, e.target) for e in reversed(entries)]
    assert seen == [("mallory", "token", "approval.approve.refused", approval_id),
                    ("sam", "token", "approval.deny", approval_id),
                    ("admin-token", "admin-token", "killswitch.engage", "session=s-audit"),
                    ("admin-token", "admin-token", "killswitch.lift", "session=s-audit")]
    assert "mallory is not an approver" in entries[-1].detail
    assert entries[-2].detail == "not during the freeze"
    assert entries[1].detail == "by 'ops': INC-9"
    assert all(e.source_address.startswith("ipv4:127.0.0.1:") for e in entries), entries


PERSON_CERT = "spiffe://acme/people/rita"


@pytest.mark.clock
def test_a_client_certificate_mapped_to_a_person_decides_as_that_person(serve: Callable[..., Server],
                                                                        tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    cert = ca.server()
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({
        "tls_cert": str(cert.cert), "tls_key": str(cert.key), "tls_client_ca": str(ca.cert),
        "tls_require_client_cert": True, "approver_groups": {"release-managers": ["rita"]},
        "person_identities": {PERSON_CERT: "rita"}}))
    rita = grpc.ssl_channel_credentials(ca.cert.read_bytes(), *ca.client(PERSON_CERT).pair())
    server = serve(extra=["--config", str(config)], credentials=rita)
    approval_id = _ask(server, 60)
    refused = _refused(lambda: _decide(server, approval_id, [], by="sam"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "names rita" in str(refused.details())
    decided = _decide(server, approval_id, [])  # no token at all: the certificate is the credential
    assert (decided.status, decided.decided_by) == ("approved", "rita")
    other = grpc.ssl_channel_credentials(ca.cert.read_bytes(), *ca.client("spiffe://acme/people/sam").pair())
    with grpc.secure_channel(server.address, other) as channel:
        stub = approval_pb2_grpc.ApprovalServiceStub(channel)
        unmapped = _refused(lambda: stub.ListApprovals(approval_pb2.ListApprovalsRequest(), timeout=10))
    assert unmapped.code() == grpc.StatusCode.UNAUTHENTICATED
    entries = _audit(server.data_dir, actor="rita")
    assert [(e.via, e.action) for e in entries][:2] == [("mtls", "approval.approve"),
                                                       ("mtls", "approval.approve.refused")]


@pytest.mark.clock
def test_person_identities_that_name_no_person_are_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="person_identities"):
        start_server(tmp_path / "data", config={"person_identities": {PERSON_CERT: "admin-token"}}, ready_timeout=20)


# Not `clock`: see the note at the top of the module.
def test_a_persons_openid_connect_token_decides_as_the_person_it_names(tmp_path: Path) -> None:
    provider = running_provider()
    idp = next(provider)  # a stand-in provider (tests/oidc_provider.py): no real IdP here
    server = start_server(tmp_path / "data", config={
        "approver_groups": {"release-managers": ["rita@example.com"]},
        "oidc": {"issuer": idp.url, "client_id": CLIENT_ID, "name_claim": "email", "clock_skew": 30}})
    try:
        approval_id = _ask(server, 70)
        idp.claims = {"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}
        expired = _refused(lambda: _decide(server, approval_id, bearer(idp.id_token(nonce="n"))))
        assert expired.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "OpenID Connect token refused: the token has expired (exp)" in str(expired.details())
        idp.claims = {"aud": "another-client"}
        other = _refused(lambda: _decide(server, approval_id, bearer(idp.id_token(nonce="n"))))
        assert other.code() == grpc.StatusCode.UNAUTHENTICATED and "Audience" in str(other.details())
        idp.claims = {}
        decided = _decide(server, approval_id, bearer(idp.id_token(nonce="n")))
        assert (decided.status, decided.decided_by) == ("approved", "rita@example.com")
        # The token's groups claim counts as approver_groups' members do: omar is in no approver_groups entry.
        second = _ask(server, 71)
        idp.claims = {"email": "omar@example.com", "groups": ["engineering"]}
        refused = _refused(lambda: _decide(server, second, bearer(idp.id_token(nonce="n"))))
        assert "omar@example.com is not an approver" in str(refused.details())
        idp.claims = {"email": "omar@example.com", "groups": ["release-managers"]}
        assert _decide(server, second, bearer(idp.id_token(nonce="n"))).decided_by == "omar@example.com"
        (entry,) = _audit(server.data_dir, actor="rita@example.com")
        assert (entry.via, entry.action) == ("oidc", "approval.approve")
    finally:
        server.terminate()
        provider.close()


def _tollgate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


# Not `clock`: see the note at the top of the module.
def test_the_cli_issues_lists_and_revokes_tokens_and_removing_an_account_revokes_its_own(server: Server,
                                                                                          tmp_path: Path) -> None:
    store = ["--data-dir", str(server.data_dir)]
    issued = _tollgate("users", "token", "sam", "--ttl", "1d", "--note", "on-call laptop", *store)
    assert issued.returncode == 0, issued.stderr
    secret = issued.stdout.strip()
    assert secret.startswith("tgp_") and "shown once" in issued.stderr and secret not in issued.stderr
    token_file = tmp_path / "sam.token"
    token_file.write_text(secret + "\n")
    approval_id = _ask(server, 80)
    at = ["--server", server.address]
    both = _tollgate("approvals", "approve", approval_id, "--reason", "r", "--token-file", str(token_file),
                     "--token", "x", *at)
    assert both.returncode == 1 and "--token and --token-file are two credentials" in both.stderr
    as_other = _tollgate("approvals", "approve", approval_id, "--reason", "r", "--token-file", str(token_file),
                         "--as", "rita", *at)
    assert as_other.returncode == 1 and "PERMISSION_DENIED: by: 'rita' is not the caller" in as_other.stderr
    listed = _tollgate("users", "tokens", "sam", *store)
    (line,) = [row for row in listed.stdout.splitlines() if "on-call laptop" in row]
    token_id = line.split("\t")[0]
    assert _tollgate("users", "revoke-token", token_id, *store).returncode == 0
    revoked = _tollgate("approvals", "approve", approval_id, "--reason", "r", "--token-file", str(token_file), *at)
    assert revoked.returncode == 1 and "UNAUTHENTICATED: this person token is not valid" in revoked.stderr
    assert _status(server, approval_id) == "pending"

    added = subprocess.run([*TOLLGATE, "users", "add", "tess", "--group", "approver", *store], input="pw-of-tess\n",
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    tess = _tollgate("users", "token", "tess", *store).stdout.strip()
    removed = _tollgate("users", "remove", "tess", *store)
    assert removed.returncode == 0 and "1 API token of tess revoked" in removed.stdout
    gone = _refused(lambda: _decide(server, approval_id, bearer(tess)))
    assert gone.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.clock
def test_a_persons_token_decides_with_the_groups_of_their_console_account(server: Server, people: People) -> None:
    approval_id = _ask(server, 90)
    refused = _refused(lambda: _decide(server, approval_id, people.metadata("tara")))
    assert "tara is not an approver" in str(refused.details())  # no account, and no approver_groups entry
    added = subprocess.run([*TOLLGATE, "users", "add", "tara", "--group", "release-managers", "--data-dir",
                            str(server.data_dir)], input="pw-of-tara\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert _decide(server, approval_id, people.metadata("tara")).decided_by == "tara"


@pytest.mark.clock
def test_the_cli_issues_a_token_into_a_fleets_postgresql_store(pg_url: str) -> None:
    assert _tollgate("state", "migrate", "--state-store", pg_url).returncode == 0
    issued = _tollgate("users", "token", "rita", "--state-store", pg_url)
    assert issued.returncode == 0, issued.stderr
    secret = issued.stdout.strip()

    async def lookup() -> str:
        store = PgStore(PgOptions(pg_url, timeout=5.0, max_connections=1))
        await store.open()
        try:
            found = await PgPersonTokens(store).lookup(secret)
            return found.person if found else ""
        finally:
            await store.close()

    assert asyncio.run(lookup()) == "rita"
    listed = _tollgate("users", "tokens", "--state-store", pg_url)
    assert "\trita\t" in listed.stdout and secret not in listed.stdout
