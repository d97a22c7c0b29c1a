"""Driving the served dashboard as a room of visitors: start it as the README does, open pages in headless
Chromium (one browser context per visitor), ask a query on each, close them, and watch the kernels and their
memory. Used by ``tests/e2e/test_dashboard_load_browser.py`` and ``benchmarks/bench_dashboard_load.py``.

Kernels are the Voilà server's child processes running ``ipykernel_launcher``; memory is their resident set
(RSS) and, for the whole of it, the proportional set (PSS, shared pages split between the processes that map
them) where the system gives it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from medxpert_utils.core.paths import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
QUERIES = ("pleural effusion", "small right pneumothorax", "cardiomegaly with pulmonary edema",
           "left lower lobe consolidation", "no acute cardiopulmonary process", "signs of pneumonia?")


# --- the server -----------------------------------------------------------------------------------

class Server:
    """``./run_all.sh --dashboard`` (or ``command``) in its own process group, its output in ``log``."""

    def __init__(self, port: int, log: Path, run: str | None = None, settings: Sequence[str] = (),
                 env: dict[str, str] | None = None, command: Sequence[str] | None = None):
        self.port, self.log, self.url = port, log, f"http://127.0.0.1:{port}/"
        cmd = list(command) if command else [str(PROJECT_ROOT / "run_all.sh"), "--dashboard", "--port", str(port),
                                             *(["--run", run] if run else []),
                                             *[a for s in settings for a in ("--set", s)]]
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_listening(self, timeout: float = 120.0) -> None:
        """Until the server accepts TCP connections (a page request would take a kernel)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the dashboard exited with {self.process.returncode}:\n{self.tail()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"the dashboard did not listen on {self.port} within {timeout:.0f} s:\n{self.tail()}")

    def kernels(self) -> list[psutil.Process]:
        """The kernel processes the server started."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for child in children:
            try:
                if any("ipykernel_launcher" in part for part in child.cmdline()):
                    found.append(child)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def server_process(self) -> psutil.Process | None:
        """The Voilà process (the launcher execs into Python, which starts Voilà as its child)."""
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                if any("voila_app" in part for part in proc.cmdline()):
                    return proc
        except psutil.NoSuchProcess:
            return None
        return None

    def wait_idle_kernels(self, count: int, timeout: float = 300.0, quiet_s: float = 3.0) -> float:
        """Until exactly ``count`` kernels run and none uses the CPU for ``quiet_s`` (a pool preheated, or culling
        done); returns the seconds waited."""
        start = time.monotonic()
        quiet_since = None
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the dashboard exited with {self.process.returncode}:\n{self.tail()}")
            kernels = self.kernels()
            busy = sum(_cpu_percent(k, 0.5) > 5.0 for k in kernels) if kernels else 0
            if len(kernels) == count and busy == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_s:
                    return time.monotonic() - start
            else:
                quiet_since = None
                time.sleep(0.5)
        raise TimeoutError(f"{len(self.kernels())} kernels after {timeout:.0f} s, waiting for {count} idle ones")

    def stop(self) -> None:
        """Stop the server and every kernel it started (they share its process group)."""
        if self.process.poll() is None:
            pgid = os.getpgid(self.process.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.process.wait(timeout=5)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # kernels that outlived the server
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def free_port(start: int = 18900) -> int:
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port from {start}")


def _cpu_percent(proc: psutil.Process, interval: float) -> float:
    try:
        return proc.cpu_percent(interval=interval)
    except psutil.NoSuchProcess:
        return 0.0


# --- memory ---------------------------------------------------------------------------------------

@dataclass
class Memory:
    kernels: int
    rss_mb: list[float]
    pss_mb: float | None
    server_rss_mb: float

    @property
    def total_rss_mb(self) -> float:
        return sum(self.rss_mb)

    def to_dict(self) -> dict:
        return {**asdict(self), "total_rss_mb": round(self.total_rss_mb, 1)}


def memory(server: Server) -> Memory:
    """The kernels' RSS each, their PSS together (None where the system does not give it) and the server's RSS."""
    rss: list[float] = []
    pss: float | None = 0.0
    for proc in server.kernels():
        try:
            full = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss.append(round(full.rss / 2**20, 1))
        if pss is not None:
            pss = pss + full.pss / 2**20 if hasattr(full, "pss") else None
    srv = server.server_process()
    server_rss = srv.memory_info().rss / 2**20 if srv is not None else 0.0
    return Memory(len(rss), rss, round(pss, 1) if pss is not None else None, round(server_rss, 1))


class Sampler:
    """Samples the kernels' count and total RSS every ``every`` seconds in a thread; ``peak`` is the largest."""

    def __init__(self, server: Server, every: float = 0.5):
        self.server, self.every = server, every
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            mem = memory(self.server)
            self.samples.append((round(time.monotonic() - start, 2), mem.kernels, round(mem.total_rss_mb, 1)))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def peak(self) -> dict:
        if not self.samples:
            return {"kernels": 0, "total_rss_mb": 0.0}
        return {"kernels": max(s[1] for s in self.samples), "total_rss_mb": max(s[2] for s in self.samples)}


# --- visitors -------------------------------------------------------------------------------------

@dataclass
class Visit:
    user: int
    query: str
    status: int = 0
    ready_s: float | None = None  # from the request to the page saying it is ready
    answer_s: float | None = None  # from pressing Search to the answer shown
    error: str = ""
    timings: str = field(default="", repr=False)


async def open_page(context, url: str, timeout_s: float, result: Visit):
    """A page of the dashboard; fills ``result.status`` and ``result.ready_s`` (request to the ready status line)."""
    page = await context.new_page()
    # Voilà's template links a CDN stylesheet; offline, refuse it at once.
    await page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
    start = time.perf_counter()
    response = await page.goto(url, timeout=timeout_s * 1000)
    result.status = response.status if response is not None else 0
    if result.status == 200:
        await page.locator(".mx-ready").wait_for(state="visible", timeout=timeout_s * 1000)
        result.ready_s = time.perf_counter() - start
    return page


async def ask(page, query: str, timeout_s: float) -> tuple[float, str]:
    """Type ``query``, press Search, wait for the answer; returns (seconds, the page's timing line)."""
    await page.locator("textarea").fill(query)
    start = time.perf_counter()
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_function("document.querySelector('.mx-done, .mx-message') !== null",
                                 timeout=timeout_s * 1000)
    elapsed = time.perf_counter() - start
    if await page.locator(".mx-message").count():
        raise RuntimeError(f"the page shows an error: {await page.locator('.mx-message').inner_text()}")
    return elapsed, await page.locator(".mx-done").first.inner_text()


async def upload(page, button: str, name: str, mime: str, content: bytes, timeout_s: float,
                 answers: str = ".mx-done, .mx-message") -> float:
    """Choose a file with the page's ``button`` and wait for one of ``answers`` to show; returns the seconds from
    choosing the file. An error line on the page raises."""
    await page.evaluate(f"document.querySelectorAll('{answers}').forEach(e => e.remove())")
    async with page.expect_file_chooser(timeout=timeout_s * 1000) as chooser:
        await page.locator(".widget-upload", has_text=button).click()
    start = time.perf_counter()
    await (await chooser.value).set_files({"name": name, "mimeType": mime, "buffer": content})
    await page.wait_for_function(f"document.querySelector('{answers}') !== null", timeout=timeout_s * 1000)
    elapsed = time.perf_counter() - start
    if await page.locator(".mx-message").count():
        raise RuntimeError(f"the page shows an error: {await page.locator('.mx-message').inner_text()}")
    return elapsed


async def ask_image(page, name: str, content: bytes, timeout_s: float) -> tuple[float, str]:
    """Upload an image (the page searches, captions, reports and locates findings), wait for the answer; returns
    (seconds from choosing the file to the answer, the page's timing line)."""
    await page.locator("textarea").fill("")
    elapsed = await upload(page, "Upload X-ray", name, "image/png", content, timeout_s)
    return elapsed, await page.locator(".mx-done").first.inner_text()


@asynccontextmanager
async def chromium() -> AsyncIterator:
    """Headless system Chromium with the project's flags (never a downloaded browser)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def _single(url: str, images: Sequence[tuple[str, bytes]], timeout_s: float) -> dict:
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 1400})
        result = Visit(0, QUERIES[0])
        page = await open_page(context, url, timeout_s, result)
        text_s, _ = await ask(page, QUERIES[0], timeout_s)
        uploads = [await ask_image(page, name, content, timeout_s) for name, content in images]
        await context.close()
    return {"ready_s": result.ready_s, "text_s": text_s, "images": [
        {"name": name, "answer_s": secs, "timings": line} for (name, _), (secs, line) in zip(images, uploads)]}


def single(url: str, images: Sequence[tuple[str, bytes]], timeout_s: float = 120.0) -> dict:
    """One visitor alone: a text query, then each image uploaded in turn (the first warms nothing the pool has not)."""
    return asyncio.run(_single(url, images, timeout_s))


async def visit(browser, url: str, user: int, query: str, timeout_s: float, close: bool = True):
    """One visitor: a new browser context, the page, one query; returns (Visit, context) (context None if closed)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 1400})
    result = Visit(user, query)
    try:
        page = await open_page(context, url, timeout_s, result)
        if result.status == 200:
            result.answer_s, result.timings = await ask(page, query, timeout_s)
    except Exception as exc:  # recorded per visitor: one failure does not hide the others' times
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    if close:
        await context.close()
        return result, None
    return result, context


async def _crowd(url: str, users: int, timeout_s: float, extra: int) -> tuple[list[Visit], list[Visit]]:
    async with chromium() as browser:
        outcomes = await asyncio.gather(*[visit(browser, url, i, QUERIES[i % len(QUERIES)], timeout_s, close=False)
                                          for i in range(users)])
        late = []
        for j in range(extra):  # while the crowd still holds its pages
            late.append((await visit(browser, url, users + j, QUERIES[0], timeout_s))[0])
        for _, context in outcomes:
            if context is not None:
                await context.close()
    return [v for v, _ in outcomes], late


def crowd(url: str, users: int, timeout_s: float = 120.0, extra: int = 0) -> tuple[list[Visit], list[Visit]]:
    """``users`` visitors at once, each asking one query and keeping the page open; then ``extra`` more visitors
    one by one while those pages are open; then every page closes. Returns (the crowd's visits, the extras')."""
    return asyncio.run(_crowd(url, users, timeout_s, extra))


async def _one_by_one(url: str, users: int, timeout_s: float) -> list[Visit]:
    async with chromium() as browser:
        return [(await visit(browser, url, i, QUERIES[i % len(QUERIES)], timeout_s))[0] for i in range(users)]


def one_by_one(url: str, users: int, timeout_s: float = 120.0) -> list[Visit]:
    """``users`` visitors one after another, each opening the page, asking one query and closing it."""
    return asyncio.run(_one_by_one(url, users, timeout_s))


def wait_kernels_at_most(server: Server, count: int, timeout: float) -> tuple[float, int]:
    """Until at most ``count`` kernels remain; returns (seconds waited, kernels then)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        n = len(server.kernels())
        if n <= count:
            return time.monotonic() - start, n
        time.sleep(1.0)
    return time.monotonic() - start, len(server.kernels())
