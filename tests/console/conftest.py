"""Fixtures for the console's tests: a real `tollgate console` beside a real `tollgate serve` on one store, people
made with `tollgate users add` (the password on stdin), and a real browser: Debian's headless Chromium driven by
Playwright (never Playwright's own browser download, which cannot be fetched here and is not needed).

- `start_console(data_dir=... | state_store=..., config=...)` → Console (its `url`), stopped with terminate();
  the `console_factory` fixture stops the ones it started.
- `add_user(name, password, groups=[...], data_dir=... | state_store=...)` → Person; add_users for several.
- `browser_page`: a page in a browser context of its own (a fresh cookie jar: one person), traced; on a failed
  test the trace (trace.zip, for Playwright's trace viewer) and a screenshot (failure.png) go into the test's tmp dir.
  `open_page()` (fixture) opens more such pages in the same test, one per person signing in at once.
- `screenshot(page, name)`: docs/console/NAME.png, only when TOLLGATE_SCREENSHOTS=1 (`make screenshots`), so a
  normal run never rewrites tracked files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, ViewportSize, expect, sync_playwright

from tests.conftest import ROOT, TOLLGATE
from tollgate.clock import SHIFT_ENV

CHROMIUM = Path("/usr/bin/chromium")
#: The flags every test browser runs with: headless, no sandbox (the tests run as root in CI), and nothing that
#: reaches for the network on its own (updates, sync, safe-browsing lists).
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")
#: How long a browser step waits for a page or an element (ms): generous for 2 shared cores, far below the test
#: timeout, so a missing element fails with Playwright's message naming it.
STEP_TIMEOUT_MS = 15_000
SCREENSHOTS_ENV = "TOLLGATE_SCREENSHOTS"
SCREENSHOTS_DIR = ROOT / "docs" / "console"
#: The screenshots' window: wide enough for the inbox's columns, the height of a laptop screen.
VIEWPORT: ViewportSize = {"width": 1280, "height": 860}
_READY = "tollgate console: serving on "


class Console:
    """A running `tollgate console` subprocess; url is its base (http://127.0.0.1:PORT)."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self._stderr: list[str] = []
        self._pump = threading.Thread(target=self._drain_stderr, daemon=True)
        self._pump.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def store_args(*, data_dir: Path | None = None, state_store: str | None = None,
               config_file: Path | None = None) -> list[str]:
    """The store options `tollgate console` and `tollgate users` share with `tollgate serve`."""
    return [*(["--data-dir", str(data_dir)] if data_dir is not None else []),
            *(["--state-store", state_store] if state_store else []),
            *(["--config", str(config_file)] if config_file is not None else [])]


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """A console config file (JSON is YAML) at path."""
    path.write_text(json.dumps(dict(config)))
    return path


def start_console(*, data_dir: Path | None = None, state_store: str | None = None,
                  config: Mapping[str, Any] | None = None, config_file: Path | None = None,
                  listen: str = "127.0.0.1:0", extra: Sequence[str] = (), ready_timeout: float = 60) -> Console:
    """Start `tollgate console` on a free port against a data dir or a state store URL (the same one a sidecar
    of the test serves from) and wait for its ready line. config: the keys of a config file written beside
    data_dir (DATA_DIR.console.yaml: the console's own under `console:`, the store's and approver_groups at the
    top, as for serve) unless config_file names one (the sidecar's: start_server writes DATA_DIR.yaml)."""
    if config is not None and config_file is None:
        assert data_dir is not None, "config without a config_file needs a data_dir to write it beside"
        config_file = write_config(data_dir.with_name(f"{data_dir.name}.console.yaml"), config)
    args = [*TOLLGATE, "console", "--listen", listen,
            *store_args(data_dir=data_dir, state_store=state_store, config_file=config_file), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if data_dir is not None:  # the sidecar's clock shift file beside the same data dir moves both clocks
        env[SHIFT_ENV] = str(data_dir.with_name(f"{data_dir.name}.clock"))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(_READY):
            return Console(proc, line[len(_READY):].split()[0].rstrip("/"))
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"tollgate console did not become ready (last stdout {line!r}):\n{err}")


class ConsoleFactory(Protocol):
    """What the `console_factory` fixture gives a test."""

    def __call__(self, *, data_dir: Path | None = None, state_store: str | None = None,
                 config: Mapping[str, Any] | None = None, config_file: Path | None = None,
                 extra: Sequence[str] = ()) -> Console: ...


@pytest.fixture
def console_factory() -> Iterator[ConsoleFactory]:
    """Factory: console_factory(data_dir=...) → Console, stopped at the end of the test."""
    consoles: list[Console] = []

    def factory(*, data_dir: Path | None = None, state_store: str | None = None,
                config: Mapping[str, Any] | None = None, config_file: Path | None = None,
                extra: Sequence[str] = ()) -> Console:
        console = start_console(data_dir=data_dir, state_store=state_store, config=config, config_file=config_file,
                                extra=extra)
        consoles.append(console)
        return console

    yield factory
    for console in consoles:
        if console.proc.poll() is None:
            console.proc.kill()
            console.proc.wait()


@dataclass(frozen=True)
class Person:
    """A local account the test made: what a person types into the sign-in form."""

    name: str
    password: str
    groups: tuple[str, ...] = ()


def add_user(name: str, password: str, *, groups: Sequence[str] = (), data_dir: Path | None = None,
             state_store: str | None = None, config_file: Path | None = None) -> Person:
    """`tollgate users add NAME --group G ...` with the password on stdin, as a person runs it."""
    (person,) = add_users({name: groups}, password, data_dir=data_dir, state_store=state_store,
                          config_file=config_file)
    return person


def add_users(people: Mapping[str, Sequence[str]], password: str, *, data_dir: Path | None = None,
              state_store: str | None = None, config_file: Path | None = None) -> list[Person]:
    """add_user for each name → groups, the commands run at once (each is mostly its interpreter's start)."""
    store = store_args(data_dir=data_dir, state_store=state_store, config_file=config_file)
    running = []
    for name, groups in people.items():
        args = [*TOLLGATE, "users", "add", name, *(a for g in groups for a in ("--group", g)), *store]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT)
        running.append((name, proc))
    made = []
    for name, proc in running:
        out, _ = proc.communicate(password + "\n", timeout=60)
        assert proc.returncode == 0, f"tollgate users add {name}: exit {proc.returncode}\n{out}"
        made.append(Person(name, password, tuple(people[name])))
    return made


# The browser.


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, for browser_page to tell a failed test from a passed one."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call"))


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless, once per module (a context per test keeps tests apart)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} not found: install Debian's chromium package (tools/setup.sh does when run "
                           "as root); Playwright's own browser download is not used")
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
    expect.set_options(timeout=STEP_TIMEOUT_MS)  # expect's own default (5 s) is short for 2 shared cores
    yield launched
    launched.close()


PageOpener = Callable[[], Page]


@pytest.fixture
def open_page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PageOpener]:
    """Factory: a new page in a new browser context (one person's cookies), traced; each is closed after the
    test, leaving its trace and a screenshot in tmp_path when the test failed."""
    opened: list[tuple[BrowserContext, Page]] = []

    def open_one() -> Page:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        context.tracing.start(screenshots=True, snapshots=True)
        page = context.new_page()
        opened.append((context, page))
        return page

    yield open_one
    failed = _failed(request)
    for number, (context, page) in enumerate(opened):
        suffix = f"-{number}" if number else ""
        if failed:
            try:
                page.screenshot(path=str(tmp_path / f"failure{suffix}.png"), full_page=True)
            except Exception:  # a page that crashed still leaves its trace
                pass
            context.tracing.stop(path=str(tmp_path / f"trace{suffix}.zip"))
        else:
            context.tracing.stop()
        context.close()
    if failed:
        print(f"browser traces (trace.zip) and screenshots (failure.png) in {tmp_path}")


@pytest.fixture
def browser_page(open_page: PageOpener) -> Page:
    """One page in a browser context of its own."""
    return open_page()


def screenshot(page: Page, name: str) -> Path | None:
    """docs/console/NAME.png of the page as it is, when TOLLGATE_SCREENSHOTS=1 (make screenshots); else nothing."""
    if os.environ.get(SCREENSHOTS_ENV) != "1":
        return None
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
