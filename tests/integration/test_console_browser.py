"""The console in a real browser (Debian's chromium driven by Playwright) against the real pipeline:
a sandbox, a worker process, `stockout-sync console` as a process. Skipped without chromium unless
REQUIRE_BROWSER=1 (CI). With UPDATE_SCREENSHOTS=1 it writes docs/console-overview.png and
docs/console-deadletters.png (README shows them); otherwise its pictures go to its temporary folder, so
a test run leaves the checkout as it found it."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.processes import wait_until
from shared.redis.conn import free_port
from tests.cli import command
from tests.integration.conftest import reset_service_caches
from tests.integration.console_kit import PASSWORDS, SECRET_KEY, write_users
from tests.integration.faults import saved, unmapped_warehouse_synced

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FAILURES = ROOT / ".browser-failures"  # a failed run's screenshot of every page (CI keeps the folder)
PAGES = ("/", "/deadletters", "/trace", "/backfill", "/reconcile", "/mapping", "/audit")
WAIT_MS = 30_000  # the most a page element is waited for; each wait ends as soon as the element shows

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def _browser_or_skip():
    missing = "" if CHROMIUM.exists() else f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "playwright is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        # Debian's chromium, never Playwright's own download; no sandbox as root in a container
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def mapping(processes, tmp_path, monkeypatch) -> Path:
    """A copy of the mapping that the test may fix, for the workers and the console alike."""
    path = tmp_path / "mapping.toml"
    shutil.copy(processes.env["MAPPING_FILE"], path)
    processes.env["MAPPING_FILE"] = str(path)
    monkeypatch.setenv("MAPPING_FILE", str(path))
    reset_service_caches()
    return path


@pytest.fixture
def console_url(processes, mapping, tmp_path) -> Iterator[str]:
    port = free_port()
    env = {**processes.env, "CONSOLE_SECRET_KEY": SECRET_KEY, "CONSOLE_REFRESH_S": "1",
           "CONSOLE_USERS_FILE": str(write_users(tmp_path / "console-users"))}
    log = (tmp_path / "console.log").open("w")
    proc = subprocess.Popen([*command("console", "--port", str(port))], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or _listening(port), timeout=60, message="console listening")
        assert proc.poll() is None, (tmp_path / "console.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_in(browser, url: str, name: str):
    page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/")
    assert page.url.endswith("/login"), "no page without a session"
    page.fill("input[name=user]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("button[type=submit]")
    page.wait_for_selector("#overview")
    return page


def screenshots_of_every_page(page, url: str, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(where / "at-failure.png"), full_page=True)
    for path in PAGES:
        try:
            page.goto(f"{url}{path}")
            page.screenshot(path=str(where / f"{path.strip('/') or 'overview'}.png"), full_page=True)
        except Exception:  # the page that failed is already shown above
            continue


def test_operator_fixes_a_mapping_and_requeues_from_the_browser_viewer_cannot(
    browser, sandbox, processes, mapping, console_url, redis_client, tmp_path
):
    from playwright.sync_api import expect

    shots = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path

    expect.set_options(timeout=WAIT_MS)
    poison, expected, letters = unmapped_warehouse_synced(sandbox, processes, redis_client, 8)
    sid, order_no = poison["stockout_id"], poison["order_no"]

    viewer = operator = None
    try:
        # a viewer sees the dead letter, but has no button and is refused a forged request
        viewer = log_in(browser, console_url, "vera")
        viewer.goto(f"{console_url}/deadletters")
        expect(viewer.locator("#groups")).to_contain_text("transform")
        expect(viewer.get_by_role("link", name=sid)).to_be_visible()
        assert viewer.locator("button.requeue-group").count() == 0
        token = viewer.locator("input[name=csrf]").first.get_attribute("value")
        refused = viewer.request.post(f"{console_url}/deadletters/requeue",
                                      form={"ids": sid, "csrf": token or "", "confirm": "yes"})
        assert refused.status == 403 and "vera is a viewer" in refused.text()
        assert letters.ids() == [sid]

        operator = log_in(browser, console_url, "otto")
        operator.goto(f"{console_url}/deadletters/{sid}")
        expect(operator.locator("#reason")).to_contain_text("WH-NEW9")
        operator.goto(f"{console_url}/deadletters")
        expect(operator.get_by_role("link", name=sid)).to_be_visible()
        operator.screenshot(path=str(shots / "console-deadletters.png"), full_page=True)

        # the operator fixes the mapping file; the Mapping page shows the new one in force
        def in_force() -> str:
            operator.goto(f"{console_url}/mapping")
            return operator.locator("#in-force").inner_text()

        before = in_force()
        mapping.write_text(mapping.read_text() + '\n[warehouses."WH-NEW9"]\nwarehouse = "SH01"\n')
        now = wait_until(lambda: (shown := in_force()) != before and shown, timeout=30, message="new mapping shown")

        # requeue the whole group from the page: the confirmation says how many and through which mapping
        operator.goto(f"{console_url}/deadletters")
        operator.locator("button.requeue-group").first.click()
        expect(operator.locator("#question")).to_contain_text("Requeue 1 dead letter(s)?")
        fingerprint = re.search(r"fingerprint (\S+),", now)
        assert fingerprint and fingerprint.group(1) in operator.locator("#through").inner_text()
        # the overview, open in another tab meanwhile, refreshes itself: it shows the letter saved
        overview = operator.context.new_page()
        overview.goto(f"{console_url}/")
        expect(overview.locator("#dead-letters a")).to_have_text("1")
        saved_before = overview.locator("#synced").inner_text()
        operator.click("#confirm")
        expect(operator.locator("#op-state")).to_contain_text("done: 1 of 1")
        expect(overview.locator("#dead-letters a")).to_have_text("0")
        expect(overview.locator("#synced")).to_have_text(str(len(expected)))
        assert saved_before == str(len(expected) - 1) and saved(sandbox)[sid] == 1
        overview.screenshot(path=str(shots / "console-overview.png"), full_page=True)
        overview.close()

        # trace it
        operator.goto(f"{console_url}/trace")
        operator.fill("input[name=q]", order_no)
        operator.click("form.filters button")
        expect(operator.locator("#verdict")).to_contain_text("done")

        # start a backfill and cancel it
        operator.goto(f"{console_url}/backfill")
        operator.fill("input[name=since]", "2026-10-01")
        operator.fill("input[name=until]", "2026-10-02")
        operator.click("#start-backfill")
        expect(operator.locator("#jobs td.state").first).to_have_text("running")
        operator.locator("#jobs button.cancel").first.click()
        expect(operator.locator("#jobs td.state").first).to_have_text("cancelled")

        # every change is in the audit trail, the viewer's refusal in none
        operator.goto(f"{console_url}/audit")
        audit = operator.locator("#audit")
        for action in ("dlq.requeue", "backfill.start", "backfill.cancel"):
            expect(audit).to_contain_text(action)
        assert "vera" not in audit.inner_text()
    except BaseException:
        for name, page in (("viewer", viewer), ("operator", operator)):
            if page is not None:
                screenshots_of_every_page(page, console_url, FAILURES / name)
        raise
