"""The console's core against a real `tollgate console` on a real store, through a plain HTTP client (the browser
tests are test_browser_*.py): sign-in, the limit on failed ones, session expiry and sign-out, roles checked on
the server, CSRF and Origin on every POST, the security headers, escaping, and the audit trail of all of it."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, TOLLGATE, start_server
from tests.console.conftest import Console, ConsoleFactory, add_user, start_console, store_args
from tests.pki import TestCA
from tollgate.clock import ManualClock
from tollgate.console._auth import MAX_TRACKED, LoginLimiter, address_block

pytestmark = pytest.mark.clock

PASSWORD = "correct horse battery staple"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
       "form-action 'self'")


def advance(data_dir: Path, seconds: float) -> None:
    """Move the console's clock (the shift file start_console gives it, beside the data dir) forward."""
    clock = data_dir.with_name(f"{data_dir.name}.clock")
    shift = float(clock.read_text()) if clock.exists() else 0.0
    part = clock.with_name(clock.name + ".part")
    part.write_text(f"{shift + seconds!r}\n")
    os.replace(part, clock)


def client(console: Console) -> httpx2.Client:
    return httpx2.Client(base_url=console.url, headers={"origin": console.url}, timeout=30)


def sign_in(http: httpx2.Client, name: str, password: str = PASSWORD, *, next_page: str = "/") -> httpx2.Response:
    """The sign-in form as a browser posts it: the token from the page, the cookie it set."""
    form = http.get("/signin")
    token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
    assert token, form.text
    return http.post("/signin", data={"name": name, "password": password, "signin_token": token.group(1),
                                      "next": next_page})


def csrf_of(page: httpx2.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def audit_rows(http: httpx2.Client, **params: str) -> list[list[str]]:
    page = http.get("/audit", params=params)
    assert page.status_code == 200, page.text
    rows = re.findall(r"<tr><td class=\"time\">(.*?)</tr>", page.text, re.S)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.split(r"</td>\s*<td[^>]*>", r)] for r in rows]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def people(data_dir: Path) -> None:
    add_user("ada", PASSWORD, groups=["admin"], data_dir=data_dir)
    add_user("vic", PASSWORD, groups=["readers"], data_dir=data_dir)
    add_user("nora", PASSWORD, groups=["nobody-maps-this"], data_dir=data_dir)


@pytest.fixture
def console(console_factory: ConsoleFactory, data_dir: Path, people: None) -> Iterator[Console]:
    yield console_factory(data_dir=data_dir, config={"console": {
        "roles": {"admin": "admin", "readers": "viewer"}, "session_ttl": 600, "login_attempts_per_user": 3,
        "login_attempts_per_address": 10, "login_window": 300}})


def test_a_person_signs_in_and_sees_who_they_are_and_their_roles(console: Console) -> None:
    with client(console) as http:
        assert http.get("/").headers["location"] == "/signin?next=/"
        signed = sign_in(http, "ada")
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        cookie = signed.headers["set-cookie"]
        assert "tollgate_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Path=/" in cookie and "Max-Age=600" in cookie
        home = http.get("/")
        assert home.status_code == 200
        assert '<span class="name">ada</span>' in home.text and '<span class="role">admin</span>' in home.text
        assert '<a href="/audit"' in home.text  # the admin's nav
        (entry, *_) = audit_rows(http, action="signin")
        assert entry[1:] == ["ada", "local", "signin", "ada", "groups: admin", "127.0.0.1"]


@pytest.mark.parametrize("name, password", [("ada", "wrong"), ("nobody", PASSWORD), ("", "")],
                         ids=["wrong-password", "unknown-name", "empty"])
def test_a_failed_sign_in_says_the_same_whatever_was_wrong_and_is_audited(console: Console, name: str,
                                                                          password: str) -> None:
    with client(console) as http:
        failed = sign_in(http, name, password)
        assert failed.status_code == 401
        assert "Unknown name or wrong password." in failed.text
        assert "tollgate_session" not in failed.headers.get("set-cookie", "")
        assert http.get("/").status_code == 303
        sign_in(http, "ada")
        (entry,) = audit_rows(http, action="signin.failed")
        assert entry[1:4] == [name, "local", "signin.failed"] and entry[-1] == "127.0.0.1"


def test_failed_sign_ins_lock_the_name_known_or_not_until_the_window_passes(console: Console,
                                                                             data_dir: Path) -> None:
    with client(console) as http:
        for name in ("ada", "ghost"):
            for _ in range(3):
                assert sign_in(http, name, "guess").status_code == 401
            for _ in range(2):  # refused again and again; audited once
                locked = sign_in(http, name, PASSWORD if name == "ada" else "guess")
                assert locked.status_code == 429, locked.text
                assert "sign-in is locked" in locked.text and "Unknown name" not in locked.text
    with client(console) as http:  # another name is not locked by these (the address allows 10 in the window)
        assert sign_in(http, "vic").status_code == 303
    with client(console) as http:
        advance(data_dir, 301)
        assert sign_in(http, "ada").status_code == 303
        actions = [row[3] for row in audit_rows(http, actor="ada")]
        assert actions.count("signin.failed") == 3 and actions.count("signin.locked") == 1


def test_failed_sign_ins_from_one_address_lock_it_for_every_name(console: Console) -> None:
    with client(console) as http:
        for number in range(10):
            assert sign_in(http, f"spray-{number}", "guess").status_code == 401
        assert sign_in(http, "ada").status_code == 429


def test_a_session_ends_at_its_expiry(console: Console, data_dir: Path) -> None:
    with client(console) as http:
        sign_in(http, "ada")
        assert http.get("/").status_code == 200
        advance(data_dir, 599)
        assert http.get("/").status_code == 200
        advance(data_dir, 2)
        assert http.get("/").headers["location"] == "/signin?next=/"


def test_sign_out_ends_the_session_and_a_replayed_cookie_opens_nothing(console: Console) -> None:
    with client(console) as http:
        sign_in(http, "ada")
        cookie = http.cookies["tollgate_session"]
        out = http.post("/signout", data={"csrf_token": csrf_of(http.get("/"))})
        assert out.status_code == 303 and out.headers["location"] == "/signin"
    with client(console) as replay:
        replay.cookies.set("tollgate_session", cookie)
        assert replay.get("/").status_code == 303
        assert replay.get("/audit").status_code == 303
        assert replay.post("/signout", data={"csrf_token": "x"}).status_code == 403
    with client(console) as http:
        sign_in(http, "ada")
        assert [row[3] for row in audit_rows(http, actor="ada")][:3] == ["signin", "signout", "signin"]


def test_roles_are_checked_on_the_server_for_every_page(console: Console) -> None:
    with client(console) as viewer:
        sign_in(viewer, "vic")
        home = viewer.get("/")
        assert home.status_code == 200 and '<span class="role">viewer</span>' in home.text
        assert '<a href="/audit"' not in home.text
        refused = viewer.get("/audit")
        assert refused.status_code == 403 and "needs the admin role" in refused.text
    with client(console) as roleless:
        sign_in(roleless, "nora")
        refused = roleless.get("/")
        assert refused.status_code == 403 and "grant no console role" in refused.text
        # and may still sign out (the page carries the form)
        assert roleless.post("/signout", data={"csrf_token": csrf_of(refused)}).status_code == 303


def test_a_post_without_the_sessions_csrf_token_or_from_another_origin_is_refused(console: Console) -> None:
    with client(console) as http:
        sign_in(http, "ada")
        token = csrf_of(http.get("/"))
        other = client(console)
        sign_in(other, "ada")
        attempts = {
            "no token": http.post("/signout", data={}),
            "another session's token": http.post("/signout", data={"csrf_token": csrf_of(other.get("/"))}),
            "forged origin": http.post("/signout", data={"csrf_token": token}, headers={"origin": "http://evil.test"}),
            "null origin": http.post("/signout", data={"csrf_token": token}, headers={"origin": "null"}),
            "cross-site fetch": http.post("/signout", data={"csrf_token": token},
                                          headers={"sec-fetch-site": "cross-site"}),
        }
        for what, answer in attempts.items():
            assert answer.status_code == 403, what
        assert http.get("/").status_code == 200  # still signed in: none of them signed out
        referer_only = httpx2.Client(base_url=console.url, cookies=http.cookies,
                                     headers={"referer": "http://evil.test/page"})
        assert referer_only.post("/signout", data={"csrf_token": token}).status_code == 403
        assert http.post("/signout", data={"csrf_token": token}).status_code == 303
        other.close()
    with client(console) as admin:
        sign_in(admin, "ada")
        refused = audit_rows(admin, action="refused")
        assert len(refused) == 6 and {tuple(row[3:5]) for row in refused} == {("refused", "POST /signout")}
        assert "CSRF token missing or wrong" in refused[-1][5]


def test_a_sign_in_form_posted_from_elsewhere_is_refused(console: Console) -> None:
    with client(console) as http:
        no_cookie = http.post("/signin", data={"name": "ada", "password": PASSWORD, "signin_token": "made-up"})
        assert no_cookie.status_code == 403
        form = http.get("/signin")
        token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
        assert token
        elsewhere = http.post("/signin", data={"name": "ada", "password": PASSWORD, "signin_token": token.group(1)},
                              headers={"origin": "http://evil.test"})
        assert elsewhere.status_code == 403 and "tollgate_session" not in elsewhere.headers.get("set-cookie", "")


@pytest.mark.parametrize("path", ["/signin", "/", "/audit", "/no-such-page", "/static/console.css"])
def test_every_answer_carries_the_security_headers(console: Console, path: str) -> None:
    with client(console) as http:
        sign_in(http, "ada")
        answer = http.get(path)
        assert answer.headers["content-security-policy"].startswith(CSP)
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
        assert answer.headers["x-frame-options"] == "DENY"
        assert "server" not in answer.headers
        if path == "/no-such-page":
            assert answer.status_code == 404 and "Traceback" not in answer.text


def test_html_in_what_a_stranger_types_is_shown_escaped(console: Console) -> None:
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    with client(console) as http:
        failed = sign_in(http, attack, "guess")
        assert attack not in failed.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in failed.text
        sign_in(http, "ada")
        page = http.get("/audit", params={"actor": attack})
        assert attack not in page.text and "<script>" not in page.text
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text


def test_a_huge_body_is_refused_before_it_is_read(console: Console) -> None:
    with client(console) as http:
        sign_in(http, "ada")
        token = csrf_of(http.get("/"))
        huge = http.post("/signout", data={"csrf_token": token, "reason": "x" * (2 * 1024 * 1024)})
        assert huge.status_code == 413
        assert http.get("/").status_code == 200


def test_sign_in_returns_to_a_page_of_this_console_only(console: Console) -> None:
    for target, landing in [("/audit", "/audit"), ("//evil.test/x", "/"), ("https://evil.test", "/"),
                            ("/\\evil.test", "/")]:
        with client(console) as http:
            assert sign_in(http, "ada", next_page=target).headers["location"] == landing


def test_cookies_are_secure_behind_https(console_factory: ConsoleFactory, data_dir: Path, people: None) -> None:
    console = console_factory(data_dir=data_dir, config={"console": {"base_url": "https://console.example.test"}})
    with httpx2.Client(base_url=console.url, headers={"origin": "https://console.example.test"}) as http:
        form = http.get("/signin")
        assert "Secure" in form.headers["set-cookie"]
        token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
        assert token
        http.cookies.set("tollgate_signin", token.group(1))  # a Secure cookie: the client keeps it off http
        signed = http.post("/signin", data={"name": "ada", "password": PASSWORD, "signin_token": token.group(1)})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("__Host-tollgate_session=") and "Secure" in cookie and "HttpOnly" in cookie


def test_the_console_serves_https_with_its_certificate(console_factory: ConsoleFactory, data_dir: Path,
                                                       people: None, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    issued = ca.server()
    console = console_factory(data_dir=data_dir, extra=["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)])
    assert console.url.startswith("https://127.0.0.1:")
    with httpx2.Client(base_url=console.url, verify=ssl.create_default_context(cafile=str(ca.cert)),
                       headers={"origin": console.url}) as http:
        signed = sign_in(http, "ada")
        assert signed.status_code == 303
        assert signed.headers["set-cookie"].startswith("__Host-tollgate_session=")
        assert "Secure" in signed.headers["set-cookie"]
        assert http.get("/").status_code == 200
    with pytest.raises(httpx2.ConnectError):  # a client that does not trust the certificate
        httpx2.get(console.url + "/signin")


def test_the_address_limit_counts_an_ipv6_client_by_its_64() -> None:
    assert address_block("2001:db8:1:2:aaaa::1") == address_block("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_block("2001:db8:1:3::1") != address_block("2001:db8:1:2::1")
    assert address_block("::ffff:10.0.0.7") == "10.0.0.7" == address_block("10.0.0.7")
    assert address_block("not an address") == "not an address"


def test_the_sign_in_limiter_keeps_bounded_memory_whatever_a_stranger_sends() -> None:
    clock = ManualClock(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    limiter = LoginLimiter(clock, per_user=3, per_address=5, window=60)
    for number in range(MAX_TRACKED + 500):
        limiter.failed(f"spray-{number}", f"10.{number // 65536}.{number // 256 % 256}.{number % 256}")
    assert len(limiter) <= MAX_TRACKED
    for _ in range(3):
        limiter.failed("rita", "10.9.9.9")
    assert 59 < limiter.retry_after("RITA", "10.1.1.1") <= 60  # names are counted case-blind
    clock.advance(61)
    assert limiter.retry_after("rita", "10.9.9.9") == 0
    assert limiter.first_refusal("rita", "10.9.9.9") and not limiter.first_refusal("Rita", "10.9.9.9")
    clock.advance(61)
    assert limiter.first_refusal("rita", "10.9.9.9")


def test_users_commands_manage_accounts_and_end_sessions(console: Console, data_dir: Path) -> None:
    def users(*args: str, password: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TOLLGATE, "users", *args, *store_args(data_dir=data_dir)], input=password + "\n",
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    listed = users("list")
    assert listed.returncode == 0
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        ["ada", "admin"], ["nora", "nobody-maps-this"], ["vic", "readers"]]
    assert users("add", "ada", password="x").returncode == 1
    assert "--password" not in users("add", "--help").stdout
    empty = users("add", "eve")
    assert empty.returncode == 1 and "must not be empty" in empty.stderr and "Traceback" not in empty.stderr
    with client(console) as http:
        sign_in(http, "vic")
        assert http.get("/").status_code == 200
        assert users("passwd", "vic", password="a new one").returncode == 0
        assert http.get("/").status_code == 303  # the password change ended the session
        assert sign_in(http, "vic").status_code == 401
        assert sign_in(http, "vic", "a new one").status_code == 303
        assert users("remove", "vic").returncode == 0
        assert http.get("/").status_code == 303
        assert users("remove", "vic").returncode == 1
    store = (data_dir / "state.db").read_bytes()
    assert PASSWORD.encode() not in store and b"a new one" not in store


def test_one_config_file_serves_the_sidecar_and_the_console(data_dir: Path) -> None:
    add_user("ada", PASSWORD, groups=["staff"], data_dir=data_dir)
    server = start_server(data_dir, config={"approver_groups": {"release-managers": ["ada"]},
                                            "console": {"roles": {"staff": "viewer"}, "session_ttl": 120}})
    try:
        console = start_console(data_dir=data_dir, config_file=data_dir.with_name(f"{data_dir.name}.yaml"))
        try:
            with client(console) as http:
                signed = sign_in(http, "ada")
                assert "Max-Age=120" in signed.headers["set-cookie"]
                home = http.get("/")
                assert home.status_code == 200 and '<span class="role">viewer</span>' in home.text
        finally:
            console.terminate()
    finally:
        server.terminate()


def test_an_unknown_console_key_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('{"console": {"sesion_ttl": 60}}')
    ran = subprocess.run([*TOLLGATE, "console", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ran.returncode == 1
    assert "unknown key 'sesion_ttl'" in ran.stderr and "session_ttl" in ran.stderr


def test_the_console_runs_on_a_shared_postgresql_store(console_factory: ConsoleFactory, pg_url: str,
                                                       tmp_path: Path) -> None:
    migrate = subprocess.run([*TOLLGATE, "state", "migrate", "--state-store", pg_url], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    add_user("ada", PASSWORD, groups=["admin"], state_store=pg_url)
    first = console_factory(state_store=pg_url)
    second = console_factory(state_store=pg_url)
    with client(first) as http:
        sign_in(http, "ada")
        cookie = http.cookies["tollgate_session"]
    with client(second) as other:  # a session started through one console replica holds on every one
        other.cookies.set("tollgate_session", cookie)
        assert other.get("/").status_code == 200
        assert audit_rows(other, action="signin")[0][1:4] == ["ada", "local", "signin"]


def test_a_never_migrated_postgresql_store_is_refused_with_the_hint(pg_url: str) -> None:
    ran = subprocess.run([*TOLLGATE, "console", "--listen", "127.0.0.1:0", "--state-store", pg_url],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ran.returncode == 1
    assert "tollgate state migrate" in ran.stderr
