"""End to end: notebook 06 served by Voilà on the smoke run, driven in headless Chromium (Playwright).

Uses the system Chromium at /usr/bin/chromium (``./run_all.sh --test`` and CI install it with apt);
Playwright's own browser download is never used. Prints the latency of a text query and of an image
upload (targets: under 1 s and 3 s on 2 cores) and only fails on a hang. Screenshots land in the test's
tmp_path. To refresh the docs screenshot from a finished run instead of a fresh smoke run:

    MEDXPERT_DASHBOARD_TEST_RUN=outputs/demo MEDXPERT_DASHBOARD_SCREENSHOT=docs/dashboard.png \
        python -m pytest tests/test_dashboard_browser.py -k chromium
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxpert_utils.app.dashboard import render as dashboard_render
from medxpert_utils.app.dashboard import server
from medxpert_utils.core.config import DashboardParams
from medxpert_utils.core.notices import DISCLAIMER
from medxpert_utils.core.paths import PROJECT_ROOT
from tests.retrieval.test_ood import ood_test_images

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
HANG_S = 30.0  # a step slower than this is a hang, not a slow machine
START_S = 120.0


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = START_S) -> None:
    """Wait until Voilà listens (a TCP connect: a page request would start a kernel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"voila exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"voila did not listen on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """Stop Voilà and the kernels it started: they share its process group (start_new_session)."""
    if process.poll() is not None:
        return
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=5)
    try:  # kernels that outlived the server
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def served_run(request) -> Path:
    """The run the page shows: the session's smoke run, or an existing finished run named by
    ``MEDXPERT_DASHBOARD_TEST_RUN`` (e.g. outputs/demo, to take the docs screenshot)."""
    existing = os.environ.get("MEDXPERT_DASHBOARD_TEST_RUN")
    return Path(existing).resolve() if existing else request.getfixturevalue("smoke_run")


@pytest.fixture(scope="module")
def voila_url(served_run, session_data_dir, tmp_path_factory):
    """Voilà serving notebook 06 on 127.0.0.1 with the run selected through MEDXPERT_RUN (one preheated kernel)."""
    port = server.free_port(18866)
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "QUERY_STRING")}
    env.update(MEDXPERT_OUTPUTS=str(served_run.parent), MEDXPERT_RUN=str(served_run), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    if not os.environ.get("MEDXPERT_DASHBOARD_TEST_RUN"):
        env["MEDXPERT_DATA"] = str(session_data_dir)
    with open(log, "wb") as handle:
        process = subprocess.Popen(server.voila_command(port, DashboardParams(pool=1)), cwd=PROJECT_ROOT, env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_port(port, process, log)
        yield url
    finally:
        _stop(process)
        print(f"voila log: {log}")


def launch_chromium(extra_args=()):
    """Headless system Chromium (never a downloaded one) with the project's flags plus ``extra_args``."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with 'apt-get install -y chromium' "
                    "(the dashboard browser tests drive the system Chromium, never a downloaded one)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args],
                                             headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


def _open(browser, url: str, query: str = ""):
    # tall enough to show the whole page: the Voila template scrolls an inner panel, not the document
    page = browser.new_page(viewport={"width": 1280, "height": 1800})
    # Voilà's template links a CDN stylesheet; the test machine is offline, so refuse it at once.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
    page.goto(url + query, timeout=START_S * 1000)
    page.locator(".mx-disclaimer").wait_for(state="visible", timeout=START_S * 1000)
    return page


def _png_bytes(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_cards(page, k: int) -> None:
    """Wait for ``k`` gallery cards; fail at once with the page's message if an error line appears instead."""
    page.wait_for_function(f"document.querySelectorAll('.mx-card').length === {k} || "
                           "document.querySelector('.mx-message') !== null", timeout=HANG_S * 1000)
    if page.locator(".mx-message").count():
        pytest.fail(f"the page shows an error: {page.locator('.mx-message').inner_text()}")


def _upload(page, name: str, content: bytes, mime: str = "image/png", button: str = "Upload X-ray") -> None:
    """Click the upload button and answer the file chooser it opens (its <input type=file> is detached)."""
    with page.expect_file_chooser(timeout=HANG_S * 1000) as chooser:
        page.locator(".widget-upload", has_text=button).click()
    chooser.value.set_files({"name": name, "mimeType": mime, "buffer": content})


def _timed(label: str, action, results: dict) -> None:
    start = time.perf_counter()
    action()
    results[label] = time.perf_counter() - start
    print(f"latency {label}: {results[label]:.2f} s")


def test_dashboard_in_chromium(voila_url, browser, served_run, tmp_path):
    latencies: dict[str, float] = {}
    start = time.perf_counter()
    page = _open(browser, voila_url)
    latencies["page load (kernel start, widgets shown)"] = time.perf_counter() - start
    print(f"latency page load: {latencies['page load (kernel start, widgets shown)']:.2f} s")
    try:
        # the served page loads the models in the background; the status line says when it is done
        page.locator(".mx-ready").wait_for(state="visible", timeout=START_S * 1000)
        latencies["models loaded in the background (from page request)"] = time.perf_counter() - start
        print("latency background model loading: "
              f"{latencies['models loaded in the background (from page request)']:.2f} s")
        assert "MedXpert" in page.title()
        assert page.locator(".mx-disclaimer").inner_text().strip() == DISCLAIMER
        assert "build_app" not in page.content()  # code cells are hidden
        assert page.locator(".widget-dropdown select").first.input_value().split()[0] == served_run.name
        k = int(page.locator(".widget-slider .widget-readout").first.inner_text())

        # a text query: K cards, a report with the disclaimer and the generator named
        page.locator("textarea").fill("pleural effusion")

        def text_query() -> None:
            page.evaluate("document.querySelectorAll('.mx-card, .mx-report, .mx-message').forEach(e => e.remove())")
            page.get_by_role("button", name="Search").click()
            _wait_cards(page, k)
            page.locator(".mx-report").wait_for(state="visible", timeout=HANG_S * 1000)
        _timed("text query (first)", text_query, latencies)
        _print_status(page)
        page.locator("textarea").fill("small right pneumothorax")
        _timed("text query (warm)", text_query, latencies)
        _print_status(page)
        assert page.locator(".mx-report").inner_text().count("NOT FOR CLINICAL USE") == 1
        assert "offline-retrieval" in page.locator(".mx-generator").inner_text()
        assert page.locator("a[download='medxpert_report.json']").count() == 1
        assert page.locator("a[download='medxpert_hits.csv']").count() == 1
        page.screenshot(path=str(tmp_path / "text_query.png"), full_page=True)

        # an image upload: the query image, its caption, the gallery and the report
        page.locator("textarea").fill("")
        corpus_image = dashboard_render.resolve_image_path(_first_hit_path(served_run), served_run)

        def upload(name: str, content: bytes):
            def action() -> None:
                page.evaluate("document.querySelectorAll('.mx-card, .mx-caption, .mx-message')"
                              ".forEach(e => e.remove())")
                _upload(page, name, content)
                page.locator(".mx-caption").wait_for(state="visible", timeout=HANG_S * 1000)
                _wait_cards(page, k)
                page.locator(".mx-report").wait_for(state="visible", timeout=HANG_S * 1000)
            return action
        _timed("image upload -> report (first)", upload("xray.png", corpus_image.read_bytes()), latencies)
        _print_status(page)
        assert page.locator(".widget-image img, img.widget-image").first.is_visible()
        assert page.locator(".mx-caption").inner_text().strip()
        page.screenshot(path=str(tmp_path / "image_query.png"), full_page=True)
        _save_docs_screenshot(page)

        # where: the typed question's heatmap is blended on the query image; the toggles switch it off and on
        page.locator("textarea").fill("left pleural effusion")
        _timed("image + text -> heatmaps", lambda: _search_with_heatmap(page, k), latencies)
        assert "left pleural effusion" in page.locator(".mx-heat").inner_text()
        _wait_colour(page, coloured=True)  # the grey film now carries the heatmap's colours
        page.screenshot(path=str(tmp_path / "heatmap.png"), full_page=True)
        page.get_by_role("button", name="off", exact=True).click()
        page.locator(".mx-heat").wait_for(state="detached", timeout=HANG_S * 1000)
        _wait_colour(page, coloured=False)
        page.get_by_role("button", name="query: left pleural effusion").click()
        page.locator(".mx-heat").wait_for(state="visible", timeout=HANG_S * 1000)
        _wait_colour(page, coloured=True)
        # a finding of the report: its map is computed when its toggle is first chosen
        toggles = page.locator(".mx-heat-choice button")
        names = [toggles.nth(i).inner_text().strip() for i in range(toggles.count())]
        findings = [n for n in names if n != "off" and not n.startswith("query:")]
        assert findings, f"the report of the uploaded film names no finding to locate: {names}"
        page.get_by_role("button", name=findings[0], exact=True).click()
        page.locator(".mx-heat", has_text=findings[0]).wait_for(state="visible", timeout=HANG_S * 1000)
        _wait_colour(page, coloured=True)
        page.locator("textarea").fill("")

        # a corrupt upload: a one-line message, no traceback; the next good upload works
        _upload(page, "broken.png", b"\x89PNG\r\n\x1a\nnot really a png")
        error = page.locator(".mx-message")
        error.wait_for(state="visible", timeout=HANG_S * 1000)
        assert "cannot read image 'broken.png'" in error.inner_text()
        assert page.locator(".mx-card").count() == 0
        assert "Traceback" not in page.content()
        other_image = dashboard_render.resolve_image_path(_first_hit_path(served_run, 1), served_run)
        _timed("image upload -> report (warm)", upload("good.png", other_image.read_bytes()), latencies)
        _print_status(page)
        assert page.locator(".mx-message").count() == 0
        page.screenshot(path=str(tmp_path / "after_error.png"), full_page=True)

        # images unlike the run's radiographs: a warning banner instead of the report, the cases on request
        for name, content, mime in ood_test_images(served_run):
            page.evaluate("document.querySelectorAll('.mx-card, .mx-report, .mx-ood, .mx-message')"
                          ".forEach(e => e.remove())")
            _upload(page, name, content, mime)
            page.wait_for_function("document.querySelector('.mx-ood, .mx-report, .mx-message') !== null",
                                   timeout=HANG_S * 1000)
            assert page.locator(".mx-ood").count() == 1, f"{name} was not flagged"
            assert page.locator(".mx-report").count() == 0 and "Not answered" in page.locator(".mx-ood").inner_text()
            assert not page.locator(".mx-card").first.is_visible()
        page.get_by_role("button", name="Show the similar cases anyway").click()
        page.locator(".mx-card").first.wait_for(state="visible", timeout=HANG_S * 1000)
        page.screenshot(path=str(tmp_path / "not_answered.png"), full_page=True)
    finally:
        page.close()
    print("dashboard latencies (s):", {name: round(value, 2) for name, value in latencies.items()})
    assert all(value < HANG_S for name, value in latencies.items() if "->" in name or "query" in name)


def test_missing_run_in_url_is_a_message(voila_url, browser):
    page = _open(browser, voila_url, "?run=no_such_run")
    try:
        message = page.locator(".mx-run-problem")
        message.wait_for(state="visible", timeout=HANG_S * 1000)
        assert "Run ./run_all.sh first: outputs/no_such_run is missing" in message.inner_text()
        assert page.get_by_role("button", name="Search").is_disabled()
        assert "Traceback" not in page.content()
    finally:
        page.close()


_COLOUR_JS = """() => {
    const img = document.querySelector('img.widget-image');
    if (!img || !img.complete || !img.naturalWidth) return -1;
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) sum += Math.abs(d[i] - d[i + 2]) + Math.abs(d[i + 1] - d[i + 2]);
    return sum / (d.length / 4);
}"""


def _wait_colour(page, coloured: bool) -> None:
    """Wait until the query image shows a heatmap (mean colourfulness > 5) or is plain grey (< 1)."""
    test = "v > 5" if coloured else "v >= 0 && v < 1"
    page.wait_for_function(f"() => {{ const v = ({_COLOUR_JS})(); return {test}; }}", timeout=HANG_S * 1000)


def _search_with_heatmap(page, k: int) -> None:
    page.evaluate("document.querySelectorAll('.mx-card, .mx-heat, .mx-message').forEach(e => e.remove())")
    page.get_by_role("button", name="Search").click()
    _wait_cards(page, k)
    page.locator(".mx-heat").wait_for(state="visible", timeout=HANG_S * 1000)


def _print_status(page) -> None:
    """The page's own timing line (search / caption / report seconds, measured in the kernel)."""
    print("  page status:", page.locator(".mx-done").inner_text(), page.locator(".mx-done + .mx-note").inner_text())


def _first_hit_path(run_dir: Path, position: int = 0) -> str:
    """An image of the run's corpus, to upload as a realistic query."""
    from medxpert_utils.data import manifest

    return str(manifest.read(run_dir)["image_path"].iloc[position])


def _save_docs_screenshot(page) -> None:
    target = os.environ.get("MEDXPERT_DASHBOARD_SCREENSHOT")
    if not target:
        return
    shot = Image.open(io.BytesIO(page.screenshot(full_page=False)))
    shot = shot.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    shot.save(Path(PROJECT_ROOT, target), format="PNG", optimize=True)
