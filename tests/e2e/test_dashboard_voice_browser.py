"""End to end: a spoken question through the record button, in headless Chromium whose fake microphone plays an
espeak-ng recording (``--use-file-for-fake-audio-capture``), on notebook 06 served by Voilà on the smoke run.
The page records with MediaRecorder (WebM/Opus), the kernel transcribes with the run's PocketSphinx model, the
transcript lands in the query box and the search shows the hits. An audio upload that is not audio is one line."""

from __future__ import annotations

import pytest

from medxpert_utils.speech.synth import synthesise
from tests.e2e import test_dashboard_browser as served
from tests.e2e.test_dashboard_browser import HANG_S, START_S, _open, _upload, _wait_cards, launch_chromium

served_run = served.served_run  # the same fixtures: Voila on the smoke run
voila_url = served.voila_url

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SPOKEN = "left pleural effusion"


@pytest.fixture(scope="module")
def microphone_browser(tmp_path_factory):
    """Chromium whose microphone says SPOKEN once (after 0.5 s of silence), then silence; permission granted."""
    wav = synthesise(SPOKEN, tmp_path_factory.mktemp("mic") / "question.wav", voice="en-us+klatt4", speed=150,
                     lead_seconds=0.5)
    yield from launch_chromium(["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                f"--use-file-for-fake-audio-capture={wav}%noloop"])


def test_spoken_question_through_the_record_button(voila_url, microphone_browser, tmp_path):
    page = _open(microphone_browser, voila_url)
    try:
        page.locator(".mx-ready").wait_for(state="visible", timeout=START_S * 1000)
        k = int(page.locator(".widget-slider .widget-readout").first.inner_text())
        record = page.locator("button.mx-record")
        record.wait_for(state="visible", timeout=HANG_S * 1000)
        assert "Record question" in record.inner_text()
        record.click()
        page.locator("button.mx-recording").wait_for(state="visible", timeout=HANG_S * 1000)
        page.wait_for_timeout(3500)  # 0.5 s of silence, the question (~1.5 s), then silence
        record.click()  # stop: the recording goes to the kernel
        page.locator(".mx-transcript").wait_for(state="visible", timeout=HANG_S * 1000)
        transcript = page.locator(".mx-transcript").inner_text().strip()
        print(f"heard: {transcript!r}")
        assert transcript == SPOKEN
        assert page.locator("textarea").input_value() == SPOKEN  # in the query box, editable
        _wait_cards(page, k)
        page.locator(".mx-report").wait_for(state="visible", timeout=HANG_S * 1000)
        assert f"matches for '{SPOKEN}'" in page.locator(".mx-done").inner_text()
        page.screenshot(path=str(tmp_path / "spoken_query.png"), full_page=True)

        # an "audio" upload that is not audio: one line, no traceback
        _upload(page, "question.wav", b"RIFF\x00\x00\x00\x00WAVEnot audio", mime="audio/wav", button="Upload audio")
        error = page.locator(".mx-message")
        error.wait_for(state="visible", timeout=HANG_S * 1000)
        assert "question.wav is not a readable audio file" in error.inner_text()
        assert "Traceback" not in page.content()
    finally:
        page.close()
