"""The Gemini reporter through google-genai against the local fake server (no network)."""

import json
import logging

import pytest

from medxpert_utils.core.config import LLMParams
from medxpert_utils.core.errors import MissingModelError
from medxpert_utils.report.context import ReportContext
from medxpert_utils.report.gemini import GeminiReporter, InvalidResponse, cache_key, validate_response
from tests.fake_gemini import (
    FakeGemini,
    error,
    evidence_report,
    malformed,
    slow,
    unknown_observation_and_bad_code,
    valid_report,
)

KEY = "AIzaTEST-secret-key-0123456789abcdef"
HITS = [
    {"rank": 1, "score": 0.9, "study_id": "s1", "report": "Cardiomegaly. No effusion.",
     "image_path": "/x/s1.png", "labels": {"Cardiomegaly": 1, "Pleural Effusion": 0}},
    {"rank": 2, "score": 0.7, "study_id": "s2", "report": "Mild cardiomegaly.", "image_path": "/x/s2.png",
     "labels": {"Cardiomegaly": 1}},
]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    return KEY


def context(**kw):
    return ReportContext.build(HITS, **{"query_text": "enlarged heart?", **kw})


def reporter(tmp_path, base_url=None, sleeps=None, **llm):
    params = LLMParams(**{"base_url": base_url, "timeout_s": 5, "max_retries": 2, "backoff_s": 0.5, **llm})
    return GeminiReporter(params, cache_dir=tmp_path / "cache", sleep=(sleeps.append if sleeps is not None else
                                                                        (lambda s: None)))


def test_valid_response_becomes_a_report(key, tmp_path):
    with FakeGemini(script=[valid_report(["s1", "s2"])]) as server:
        report = reporter(tmp_path, server.base_url).report(context(question="enlarged heart?"))
    assert report.generator == "gemini:gemini-2.5-flash"
    assert report.present_names() == {"Cardiomegaly"} and report.findings[0].evidence == ["s1", "s2"]
    assert [(c.code, c.description) for c in report.icd10] == [("I51.7", "Cardiomegaly")]
    assert report.supporting_study_ids == ["s1", "s2"] and report.question == "enlarged heart?"
    (request,) = server.requests
    assert request.path == "/v1/models/gemini-2.5-flash:generateContent"
    assert request.headers.get("x-goog-api-key") == KEY
    assert KEY not in request.path and KEY.encode() not in request.raw  # the key travels only as the header
    config = request.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"]["properties"]["findings"]["type"] == "ARRAY"
    assert "research assistant" in request.body["systemInstruction"]["parts"][0]["text"]
    assert "study_id=s1" in request.prompt_text and "enlarged heart?" in request.prompt_text
    assert not request.has_image  # text only by default


def test_429_then_success_retries_with_backoff(key, tmp_path):
    sleeps = []
    with FakeGemini(script=[error(429), valid_report(["s1"])]) as server:
        report = reporter(tmp_path, server.base_url, sleeps).report(context())
    assert len(server.requests) == 2 and sleeps == [0.5]
    assert report.generator.startswith("gemini:")


def test_500_storm_falls_back_to_offline_and_says_why(key, tmp_path):
    sleeps = []
    with FakeGemini(script=[error(500)]) as server:
        report = reporter(tmp_path, server.base_url, sleeps, max_retries=3).report(context())
    assert len(server.requests) == 4 and sleeps == [0.5, 1.0, 2.0]  # exponential backoff
    assert report.generator == "offline-retrieval (fallback: Gemini API error 500 INTERNAL)"
    assert report.present_names() == {"Cardiomegaly"}  # the offline reporter filled the same schema
    assert not list((tmp_path / "cache").glob("*.json"))  # failures are not cached


def test_client_errors_are_not_retried(key, tmp_path):
    with FakeGemini(script=[error(403, f"API key {KEY} not valid")]) as server:
        report = reporter(tmp_path, server.base_url).report(context())
    assert len(server.requests) == 1
    assert "403" in report.generator and KEY not in report.model_dump_json()


def test_timeout_is_retried_then_falls_back(key, tmp_path):
    with FakeGemini(script=[slow(3.0)]) as server:
        report = reporter(tmp_path, server.base_url, timeout_s=0.4, max_retries=1).report(context())
    assert len(server.requests) == 2
    assert report.generator == "offline-retrieval (fallback: timeout after 0.4s)"


def test_malformed_json_is_retried(key, tmp_path):
    with FakeGemini(script=[malformed(), valid_report(["s2"])]) as server:
        report = reporter(tmp_path, server.base_url).report(context())
    assert len(server.requests) == 2 and report.generator.startswith("gemini:")
    with FakeGemini(script=[malformed()]) as server:
        report = reporter(tmp_path / "other", server.base_url, max_retries=1).report(context())
    assert report.generator.startswith("offline-retrieval (fallback: invalid response: response is not JSON")


def test_unknown_observation_and_bad_icd10_fail_validation(key, tmp_path):
    with FakeGemini(script=[unknown_observation_and_bad_code(["s1"])]) as server:
        report = reporter(tmp_path, server.base_url, max_retries=1).report(context())
    assert len(server.requests) == 2
    assert "unknown observation 'Pulmonary Fibrosis'" in report.generator
    assert report.generator.startswith("offline-retrieval (fallback:")


def test_validation_checks_codes_and_evidence():
    good = json.loads(valid_report(["s1"]).body["candidates"][0]["content"]["parts"][0]["text"])
    assert validate_response(json.dumps(good), ["s1"]).findings[0].name == "Cardiomegaly"
    with pytest.raises(InvalidResponse, match="not retrieved"):
        validate_response(json.dumps(good), ["s9"])
    with pytest.raises(InvalidResponse, match="invalid ICD-10-CM code 'J18.99'"):
        validate_response(json.dumps({**good, "icd10_codes": ["J18.99"]}), ["s1"])
    with pytest.raises(InvalidResponse, match="schema mismatch at impression"):
        validate_response(json.dumps({k: v for k, v in good.items() if k != "impression"}), ["s1"])
    with pytest.raises(InvalidResponse, match="empty"):
        validate_response("", ["s1"])


def test_cache_hit_on_rerun_sends_nothing(key, tmp_path):
    with FakeGemini(script=[evidence_report]) as server:
        first = reporter(tmp_path, server.base_url).report(context())
        again = reporter(tmp_path, server.base_url)  # a new process would build a new reporter
        second = again.report(context())
        assert len(server.requests) == 1 and again.calls == 0
        assert second == first
        reporter(tmp_path, server.base_url).report(context(question="other question"))
        assert len(server.requests) == 2  # a different prompt is a different key
    files = list((tmp_path / "cache").glob("*.json"))
    assert len(files) == 2 and all(len(f.stem) == 64 for f in files)
    assert cache_key("m", "p", {}) != cache_key("m2", "p", {}) != cache_key("m", "p", {"x": 1})


def test_sdk_env_base_url_is_honoured_when_params_leave_it_unset(key, tmp_path, monkeypatch):
    with FakeGemini(script=[valid_report(["s1"])]) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        report = reporter(tmp_path, base_url=None).report(context())
    assert len(server.requests) == 1 and report.generator.startswith("gemini:")


def test_image_is_sent_only_when_asked(key, tmp_path):
    from PIL import Image

    image = Image.new("L", (8, 8), 128)
    with FakeGemini(script=[valid_report(["s1"])]) as server:
        reporter(tmp_path / "a", server.base_url).report(context(image=image))
        reporter(tmp_path / "b", server.base_url, send_image=True).report(context(image=image))
    assert [r.has_image for r in server.requests] == [False, True]


def test_key_never_leaks_into_logs_outputs_or_files(key, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with FakeGemini(script=[error(429, f"quota for key {KEY}"), error(500), malformed(),
                            valid_report(["s1"])]) as server:
        report = reporter(tmp_path, server.base_url, max_retries=3).report(context())
    assert report.generator.startswith("gemini:")
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    assert KEY not in caplog.text and "retrying" in caplog.text
    assert KEY not in report.model_dump_json()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace")


def test_no_key_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(MissingModelError, match="GEMINI_API_KEY") as info:
        GeminiReporter(LLMParams())
    assert "\n" not in str(info.value)


def test_google_api_key_also_works(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    with FakeGemini(script=[valid_report(["s1"])]) as server:
        reporter(tmp_path, server.base_url).report(context())
    assert server.requests[0].headers["x-goog-api-key"] == KEY


@pytest.mark.slow
def test_notebook_05_with_gemini_keeps_the_key_out_of_the_run(smoke_run, tmp_path, monkeypatch):
    """Notebook 05 through papermill with a (dummy) key and the fake endpoint: Gemini writes the reports,
    and the key is nowhere in the executed notebook, run.json, reports, metrics or cache."""
    import shutil

    from medxpert_utils.app.pipeline import run_chain
    from medxpert_utils.report import read_reports

    run_dir = tmp_path / "gemini_run"
    shutil.copytree(smoke_run, run_dir)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with FakeGemini() as server:
        run_chain("params/smoke.yaml", run=run_dir, only=["05"], log=lambda message: None,
                  overrides={"llm.base_url": server.base_url, "llm.backoff_s": 0})
        assert server.requests and all(r.headers.get("x-goog-api-key") == KEY for r in server.requests)
    reports = read_reports(run_dir)
    assert reports and all(r.generator == "gemini:gemini-2.5-flash" for r in reports)
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in {".ipynb", ".json", ".jsonl", ".html", ".txt", ".log"}:
            assert KEY not in path.read_text(errors="replace"), path
