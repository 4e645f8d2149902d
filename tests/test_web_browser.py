"""The status page in a real Chromium (Debian's ``chromium``, driven by Playwright),
against a real ``stylefold serve`` process on a temporary root with random weights at
32-64 px: the page loads; a running job's step counter rises; a result's before/after
appears; a failure shows its sentence and Retry makes a new job that ends in done/; an
upload through the drop zone ends in done/.

Screenshots of each state go to ``$STYLEFOLD_SCREENSHOTS`` (default
``tests/.screenshots/``, which ignores itself in git). Skipped, saying why, where
Chromium or Playwright is missing; CI installs both.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .conftest import write_photo, write_texture

T = TypeVar("T")
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser")
                             or "") if p and os.path.exists(p)), None)
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - CI installs it with the test extras
    sync_playwright = None  # type: ignore[assignment]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # there they must run, not skip
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None and not IN_CI,
                       reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None and not IN_CI,
                       reason="Playwright for Python is not installed (pip install playwright)"),
    pytest.mark.skipif(sys.platform != "linux", reason="the daemon's test rig is Linux-only"),
]

START_S = 120.0
JOB_S = 150.0
SLOW_STEPS = 2000  # never ends while the test watches it
_DAEMON_ENV = ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS", "STYLEFOLD_WEB",
               "STYLEFOLD_WEB_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def wait_until(check: Callable[[], T], timeout: float, what: str, log: Path | None = None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(0.05)


def screenshots() -> Path:
    folder = Path(os.environ.get("STYLEFOLD_SCREENSHOTS") or Path(__file__).parent / ".screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("STYLEFOLD_SCREENSHOTS"):
        (folder / ".gitignore").write_text("*\n")
    return folder


class Served:
    def __init__(self, root: Path, proc: subprocess.Popen[bytes], log: Path, url: str) -> None:
        self.root, self.proc, self.log, self.url = root, proc, log, url

    def done(self, rel: str) -> bool:
        return (self.root / "done" / rel).is_file()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("browser")
    root = base / "hot"
    (root / "presets").mkdir(parents=True)
    for folder in ("inbox/tiny", "inbox/slow", "styles"):
        (root / folder).mkdir(parents=True)
    write_texture(root / "styles" / "tex.png", size=48, seed=1)
    (root / "presets" / "tiny.json").write_text(json.dumps(
        {"steps": 3, "size": 32, "style": "tex.png", "init": "content", "description": "3 steps at 32 px"}))
    (root / "presets" / "slow.json").write_text(json.dumps(
        {"steps": SLOW_STEPS, "size": 48, "style": "tex.png", "init": "content", "description": "to watch"}))
    (root / "stylefold.toml").write_text('settle_s = 0.2\npair_timeout_s = 1\ncheckpoint_every = 10\n'
                                         'presets_dir = "presets"\ndefault_preset = "tiny"\n')
    env = {k: v for k, v in os.environ.items() if k not in _DAEMON_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    log = base / "serve.log"
    argv = [sys.executable, "-m", "stylefold", "serve", "--root", str(root), "--weights", "random",
            "--device", "cpu", "--web", "127.0.0.1:0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=base)
    try:
        found = wait_until(lambda: proc.poll() is None and re.search(r"status page at (http://\S+)", log.read_text()),
                           START_S, "the status page's URL in the log", log)
        wait_until(lambda: "serving " in log.read_text(), START_S, "the daemon to serve", log)
        yield Served(root, proc, log, found.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert sync_playwright is not None and CHROMIUM is not None, "CI must run the browser tests: install chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "404" not in msg.text else None)
    tab.goto(served.url)
    yield tab
    context.close()
    assert errors == [], errors  # no script error, no CSP violation


def drop(root: Path, rel: str, seed: int = 0, **size: int) -> Path:
    staging = root.parent / f"staging-{Path(rel).name}"
    write_photo(staging, seed=seed, **size)
    target = root / "inbox" / rel
    os.rename(staging, target)
    return target


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(screenshots() / name), full_page=True)


def test_the_page_loads_with_presets_daemon_and_an_empty_queue(page: Page, served: Served) -> None:
    expect(page.locator("h1")).to_have_text("stylefold")
    expect(page.locator("#connection")).to_have_text("live", timeout=15_000)
    expect(page.locator("#presets .preset .name", has_text="tiny")).to_be_visible()
    expect(page.locator("#daemons .daemon")).to_contain_text("cpu")
    expect(page.locator("#preset-select option[value=slow]")).to_have_count(1)
    page.wait_for_function("() => [...document.querySelectorAll('#presets img')].every(i => i.naturalWidth > 0)")
    shot(page, "01-page-loaded.png")


def test_a_results_before_and_after_appear(page: Page, served: Served) -> None:
    drop(served.root, "tiny/pair.jpg", seed=4)
    wait_until(lambda: served.done("tiny/pair.jpg"), JOB_S, "tiny/pair.jpg in done/", served.log)
    card = page.locator("#recent .result", has_text="pair.jpg")
    expect(card).to_be_visible(timeout=15_000)
    page.wait_for_function("""() => [...document.querySelectorAll('#recent .result')]
        .filter(c => c.textContent.includes('pair.jpg'))
        .every(c => [...c.querySelectorAll('img.before, img.after')].every(i => i.complete && i.naturalWidth > 0))""")
    expect(card.locator("a", has_text="loss log")).to_have_attribute("href", re.compile(r"/losses\.csv$"))
    shot(page, "02-result-before-after.png")


def test_a_failure_shows_its_sentence_and_retry_makes_a_job_that_ends_in_done(page: Page, served: Served) -> None:
    sidecar = served.root / "inbox" / "late.json"
    sidecar.write_text(json.dumps({"extends": "tiny", "style": "later.png"}))
    drop(served.root, "late.jpg", seed=5)
    failure = page.locator("#failed .failure", has_text="late.jpg")
    expect(failure.locator(".error")).to_contain_text("style 'later.png' not found", timeout=JOB_S * 1000)
    expect(failure.locator(".kind")).to_have_text("style_not_found")
    shot(page, "03-failure.png")
    write_texture(served.root / "styles" / "later.png", size=48, seed=7)  # the fix
    failure.locator("button.retry").click()
    expect(failure.locator("button.retry")).to_contain_text("retried as up-", timeout=15_000)
    wait_until(lambda: served.done("late.jpg"), JOB_S, "the retried late.jpg in done/", served.log)
    expect(page.locator("#recent .result", has_text="late.jpg")).to_be_visible(timeout=15_000)
    shot(page, "04-retried-and-done.png")


def test_an_upload_through_the_drop_zone_ends_in_done(page: Page, served: Served, tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "dropped.jpg", seed=6)
    page.select_option("#preset-select", "tiny")
    payload = base64.b64encode(photo.read_bytes()).decode()
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
        const zone = document.getElementById('dropzone');
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", payload)
    expect(page.locator("#upload-status li").first).to_contain_text("queued as tiny/dropped.jpg", timeout=15_000)
    wait_until(lambda: served.done("tiny/dropped.jpg"), JOB_S, "the upload in done/tiny/", served.log)
    assert (served.root / "done" / "tiny" / "dropped.jpg").read_bytes() == photo.read_bytes()
    expect(page.locator("#recent .result", has_text="dropped.jpg")).to_be_visible(timeout=15_000)
    shot(page, "05-uploaded-and-done.png")


def test_a_running_jobs_step_counter_rises_and_shows_its_current_image(page: Page, served: Served) -> None:
    drop(served.root, "slow/watch.jpg", seed=3)
    counter = page.locator("#running .job .step")
    expect(counter).to_have_text(re.compile(rf"^\d+ / {SLOW_STEPS}$"), timeout=JOB_S * 1000)
    first = int(counter.inner_text().split(" / ")[0])
    page.wait_for_function(f"""() => {{
        const node = document.querySelector('#running .job .step');
        return node && parseInt(node.textContent) > {first};
    }}""", timeout=JOB_S * 1000)
    page.wait_for_function("() => { const i = document.querySelector('#running .job img.current');"
                           " return i && i.src.includes('/current') && i.naturalWidth > 0; }", timeout=JOB_S * 1000)
    expect(page.locator("#running .job .rate")).to_contain_text("steps/s")
    page.wait_for_function("""() => { const c = document.querySelector('#running .job canvas.curve');
        if (!c) return false;
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < px.length; i += 4) if (px[i] > 0) return true;
        return false; }""", timeout=JOB_S * 1000)
    shot(page, "06-running-job.png")
    # Last in the file: the long job keeps running; the fixture's SIGTERM checkpoints it.


def test_stylefold_web_alone_behind_a_token_shows_the_daemons_running_job(browser: Any, served: Served) -> None:
    """`stylefold web` in its own process on the same root, with a token: the page
    sends the browser to the login form; after it, the daemon's running job (the one
    above, still running) is on the page: every process on a root shows the whole root."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "browser-test-token-0123456789abcdef"
    env = {k: v for k, v in os.environ.items() if k not in _DAEMON_ENV}
    env.update(PYTHONUNBUFFERED="1", STYLEFOLD_WEB_TOKEN=token)
    log = served.log.with_name("web.log")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stylefold", "web", "--root", str(served.root), "--listen",
                                 f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT, env=env)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        wait_until(lambda: "status page of" in log.read_text(), START_S, "stylefold web to serve", log)
        tab = context.new_page()
        tab.goto(f"http://127.0.0.1:{port}/")
        expect(tab.locator("input[name=token]")).to_be_visible()
        shot(tab, "07-login.png")
        tab.fill("input[name=token]", "wrong-token-of-enough-length")
        tab.click("button[type=submit]")
        expect(tab.locator("body")).to_contain_text("Wrong token")
        tab.fill("input[name=token]", token)
        tab.click("button[type=submit]")
        expect(tab.locator("#connection")).to_have_text("live", timeout=15_000)
        expect(tab.locator("#running .job .step")).to_have_text(re.compile(rf"^\d+ / {SLOW_STEPS}$"),
                                                                timeout=JOB_S * 1000)
        tab.wait_for_function("() => [...document.querySelectorAll('#presets img')].every(i => i.naturalWidth > 0)",
                              timeout=JOB_S * 1000)  # the session cookie opens the images too
        shot(tab, "08-web-alone-after-login.png")
    finally:
        context.close()
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()
