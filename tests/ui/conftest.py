"""Browser fixtures: a live vxnet server with the UI, and Debian's Chromium driven by Playwright.

- `ui_server`: a fresh server per test (tests/conftest.py's `start_server`: same users, Neutron's
  default quotas, and a short graceful-shutdown timeout so an open event stream never holds the
  server up).
- `chromium`: one headless Chromium per session (Debian's /usr/lib/chromium/chromium; Playwright
  never downloads a browser here). `new_page(viewport)` opens a fresh context (fresh
  sessionStorage) per call and closes it after the test; uncaught page errors fail the test.
- Screenshots go to `test-output/ui/` at the repo root (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import PASSWORDS, USERS, ServerHandle, start_server
from tests.support import ports
from vxnet.config import Config

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output" / "ui"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(p)), None)


def start_ui_server(db_path: str) -> ServerHandle:
    port = ports.free_port()
    return start_server(db_path, Config(listen=f"127.0.0.1:{port}", users=USERS), port)


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[ServerHandle]:
    h = start_ui_server(str(tmp_path / "vxnet.db"))
    yield h
    h.stop()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (etc/apt-packages.txt must list `chromium`)")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("pw-tmp"))  # Playwright leaves folders in TMPDIR
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--disable-quic"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def out_dir() -> Path:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    return OUT


@pytest.fixture
def new_page(chromium: Browser) -> Iterator[Callable[..., Page]]:
    contexts: list[Any] = []
    errors: list[str] = []

    def make(width: int = 1280, height: int = 800) -> Page:
        ctx = chromium.new_context(viewport={"width": width, "height": height})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def login(page: Page, url: str, user: str) -> None:
    """Sign in through the page's form and wait for the first drawing and the live stream."""
    page.goto(url + "/ui")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password", exact=True).fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#graph[data-ready=true]")
    page.wait_for_selector("#live.on")
