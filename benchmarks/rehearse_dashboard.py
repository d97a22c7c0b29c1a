"""The dashboard serving the rehearsal run (full-size models with random weights), as a visitor uses it.

Starts ``./run_all.sh --dashboard --run rehearsal`` (one preheated kernel), opens the page in headless Chromium and
checks that it says the run has random weights; then a typed query, an uploaded image from the run (search,
caption with BLIP base, report, heatmap) and an uploaded spoken question (Whisper small); then closes the page and
stops the server, checking that no kernel is left. Times, the kernels' memory and the page's text go to
``benchmarks/results/rehearse_dashboard.json``; a screenshot to ``benchmarks/results/rehearse_dashboard.png``.

    python benchmarks/rehearse_dashboard.py [--run rehearsal]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medxpert_utils.core import config, io  # noqa: E402
from medxpert_utils.data import manifest  # noqa: E402
from medxpert_utils.speech.synth import synthesise  # noqa: E402
from tests.e2e.dashboard_load import (  # noqa: E402
    Server,
    Visit,
    ask,
    ask_image,
    chromium,
    free_port,
    memory,
    open_page,
    upload,
)

RESULTS = ROOT / "benchmarks" / "results"
SPOKEN = "left pleural effusion"


async def upload_audio(page, wav: Path, timeout_s: float) -> tuple[float, str]:
    """Upload a spoken question; returns (seconds to the answer, what the page heard). A random recogniser's words
    may read unlike the run's reports: the query check's banner is an answer too."""
    elapsed = await upload(page, "Upload audio", wav.name, "audio/wav", wav.read_bytes(), timeout_s,
                           answers=".mx-done, .mx-message, .mx-ood")
    return elapsed, (await page.locator(".mx-transcript").inner_text()).strip()


async def visit(url: str, image: tuple[str, bytes], wav: Path, shot: Path, timeout_s: float) -> dict:
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 1600})
        result = Visit(0, "signs of pneumonia?")
        page = await open_page(context, url, timeout_s, result)
        banner = (await page.locator(".mx-random-weights").inner_text()).strip()
        text_s, text_line = await ask(page, result.query, timeout_s)
        image_s, image_line = await ask_image(page, image[0], image[1], timeout_s)
        caption = (await page.locator(".mx-caption").first.inner_text()).strip() if await page.locator(
            ".mx-caption").count() else ""
        audio_s, heard = await upload_audio(page, wav, timeout_s)
        await page.screenshot(path=str(shot), full_page=False)
        await context.close()
    return {"ready_s": result.ready_s, "banner": banner, "text_s": text_s, "text_line": text_line,
            "image_s": image_s, "image_line": image_line, "caption": caption[:200], "audio_s": audio_s,
            "heard": heard[:200]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="rehearsal")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any one step may take")
    args = parser.parse_args(argv)
    cfg = config.load("rehearsal", args.run)
    frame = manifest.read(cfg.run_dir)
    row = frame[frame["split"] == "test"].iloc[0]
    image = (Path(row["image_path"]).name, Path(row["image_path"]).read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        wav = synthesise(SPOKEN, Path(tmp) / "question.wav", voice="en-us+klatt4", speed=150, lead_seconds=0.3)
        server = Server(free_port(), Path(tmp) / "voila.log", run=args.run,
                        settings=["dashboard.pool=1", "dashboard.max_sessions=2"])
        try:
            server.wait_listening(timeout=300)
            preheated_s = server.wait_idle_kernels(1, timeout=600)
            idle = memory(server).to_dict()
            visit_result = asyncio.run(visit(server.url, image, wav, RESULTS / "rehearse_dashboard.png",
                                             args.timeout))
            after = memory(server).to_dict()
        except Exception:
            print(server.tail(), file=sys.stderr)
            raise
        finally:
            server.stop()
        left = server.kernels()
    result = {"run": args.run, "preheated_s": preheated_s, "idle_memory": idle, "after_visit_memory": after,
              "visit": visit_result, "kernels_left_after_stop": len(left)}
    io.write_json(RESULTS / "rehearse_dashboard.json", result)
    print(result)
    assert "Random weights" in visit_result["banner"], visit_result["banner"]
    assert not left, "kernels left after the server stopped"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
