"""A real Chromium driven by Playwright (Debian's /usr/bin/chromium, no downloaded browser): logs in through
the pages as a person would, then reads and photographs what they see."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Page, sync_playwright

from opensegur.ops.demo_accounts import DemoAccount

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking flags Chromium keeps calling hosts this machine cannot reach.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def browser_page(viewport: tuple[int, int] = (1300, 1000)) -> Iterator[Page]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium must be installed in CI (.ci/run installs it)")
        pytest.skip("chromium not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, locale="fr-FR")
            yield page
        finally:
            browser.close()


_LAST_STEP: dict[str, int] = {}


def fresh_totp(secret: str) -> str:
    """A code the platform has not seen yet: it accepts each 30-second step once (replay refused) and the steps
    next to the current one, so two logins of one account in the same step use the next step's code."""
    totp = pyotp.TOTP(secret)
    while True:
        now = time.time()
        step = int(now // totp.interval)
        wanted = max(step, _LAST_STEP.get(secret, -1) + 1)
        if wanted <= step + 1:
            _LAST_STEP[secret] = wanted
            return totp.at(wanted * totp.interval)
        time.sleep((step + 1) * totp.interval - now + 0.05)


def log_in(page: Page, base: str, account: DemoAccount, then: str = "/identites") -> None:
    """The login pages as a person uses them: identifier and password, then the code of their TOTP app."""
    page.goto(f"{base}{then}")
    assert "/connexion" in page.url  # nobody is let in without logging in
    page.fill("input[name=login]", account.login)
    page.fill("input[name=password]", account.password)
    page.click("button[type=submit]")
    if account.totp_secret:
        page.wait_for_selector("input[name=code]")
        page.fill("input[name=code]", fresh_totp(account.totp_secret))
        page.click("button[type=submit]")
    page.wait_for_url(f"{base}{then}")


# Screenshots a person can look at after the run (CI keeps the folder): test-artefacts/ at the repository root.
ARTEFACTS = Path(
    os.environ.get("OPENSEGUR_TEST_ARTEFACTS", Path(__file__).resolve().parents[1] / "test-artefacts")
)


def screenshot(page: Page, path: Path | str) -> Path:
    """``path``: a file, or a bare name kept under ARTEFACTS."""
    target = Path(path) if isinstance(path, Path) else ARTEFACTS / path
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    return target
