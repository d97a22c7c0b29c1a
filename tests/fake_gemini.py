"""A fake Gemini REST endpoint on 127.0.0.1 for tests (stdlib only, no network).

google-genai 3.x sends ``POST {base_url}/{api_version}/models/{model}:generateContent`` (api_version
``v1`` by default, ``v1beta`` with ``GOOGLE_GENAI_API_VERSION=beta``) with the key in the
``x-goog-api-key`` header and answers parsed from ``candidates[0].content.parts[*].text``.

    with FakeGemini(script=[error(429), valid_report()]) as server:
        ...  # point llm.base_url (or GOOGLE_GEMINI_BASE_URL) at server.base_url
        server.requests  # what arrived: path, headers, JSON body

``script`` entries are used one per request, in order; the last one repeats. An entry is a
:class:`Reply`, a dict (sent as a 200 JSON body) or a callable ``(request) -> Reply``. The default
script answers every request with :func:`evidence_report`, a valid report built from the prompt's
own retrieved cases (for notebook smoke runs with a dummy key).

``python -m tests.fake_gemini --port 8765`` serves the default script until interrupted.
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

ROUTE = re.compile(r"^/(?P<version>v[\w.]+)/models/(?P<model>[^/:]+):generateContent$")


@dataclass
class Reply:
    """One scripted answer: HTTP status, JSON body (or raw text) and a delay before answering."""

    status: int = 200
    body: Any = None
    delay: float = 0.0
    raw: str | None = None


@dataclass
class Request:
    """One request the fake server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = b""
    model: str | None = None

    @property
    def prompt_text(self) -> str:
        """All text parts of the request's contents, joined."""
        parts = [p.get("text", "") for c in (self.body or {}).get("contents", []) for p in c.get("parts", [])]
        return "\n".join(p for p in parts if p)

    @property
    def has_image(self) -> bool:
        return any("inlineData" in p or "inline_data" in p
                   for c in (self.body or {}).get("contents", []) for p in c.get("parts", []))


def candidate(text: str, finish: str = "STOP", model: str = "gemini-2.5-flash") -> dict:
    """A generateContent response body with one text candidate."""
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish,
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 50, "totalTokenCount": 150},
            "modelVersion": model}


def report_json(findings: list[dict] | None = None, icd10_codes: list[str] | None = None, **fields) -> str:
    """The JSON text of an LLMReport answer."""
    data = {"findings": findings or [], "impression": fields.pop("impression", "Evidence summarised."),
            "overall_severity": fields.pop("overall_severity", "mild"),
            "suggestions": fields.pop("suggestions", ["Compare with prior imaging."]),
            "icd10_codes": icd10_codes or [], "answer": fields.pop("answer", None)}
    data.update(fields)
    return json.dumps(data)


def valid_report(evidence: list[str] | None = None, **fields) -> Reply:
    """A valid answer: Cardiomegaly present citing ``evidence``, code I51.7."""
    findings = fields.pop("findings", [{"name": "Cardiomegaly", "status": "present", "location": None,
                                        "severity": "mild", "evidence": evidence or [], "confidence": 0.8}])
    return Reply(body=candidate(report_json(findings, fields.pop("icd10_codes", ["I51.7"]), **fields)))


def error(status: int, message: str | None = None) -> Reply:
    """A Google API error body (429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE, ...)."""
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
    return Reply(status=status, body={"error": {"code": status, "message": message or names.get(status, "error"),
                                                "status": names.get(status, "UNKNOWN")}})


def slow(seconds: float, then: Reply | None = None) -> Reply:
    """Answer only after ``seconds`` (longer than the client timeout -> the client times out)."""
    reply = then or valid_report()
    return Reply(status=reply.status, body=reply.body, delay=seconds, raw=reply.raw)


def malformed() -> Reply:
    """A 200 whose candidate text is not JSON."""
    return Reply(body=candidate('{"findings": [ {"name": "Cardiomegaly", "status": '))


def unknown_observation_and_bad_code(evidence: list[str] | None = None) -> Reply:
    """A well-formed answer naming an observation outside CheXpert and an invalid ICD-10 code."""
    findings = [{"name": "Pulmonary Fibrosis", "status": "present", "location": None, "severity": None,
                 "evidence": evidence or [], "confidence": 0.7}]
    return Reply(body=candidate(report_json(findings, ["ZZ9.99"])))


_CASE = re.compile(r"^\[(\d+)\] study_id=(\S+)", re.MULTILINE)
_POSITIVE = re.compile(r"^\s+labels: positive: ([^;\n]*)", re.MULTILINE)


def evidence_report(request: Request) -> Reply:
    """A valid answer drawn from the prompt: the top case's positive labels, citing its study_id."""
    cases = _CASE.findall(request.prompt_text)
    positives = _POSITIVE.findall(request.prompt_text)
    if not cases:
        return Reply(body=candidate(report_json([], [], overall_severity="normal")))
    sid = cases[0][1]
    names = [n.strip() for n in (positives[0] if positives else "").split(",") if n.strip() and n.strip() != "none"]
    findings = [{"name": n, "status": "present", "location": None, "severity": None, "evidence": [sid],
                 "confidence": 0.6} for n in names]
    codes = {"Cardiomegaly": "I51.7", "Pleural Effusion": "J90", "Pneumothorax": "J93.9", "Pneumonia": "J18.9",
             "Atelectasis": "J98.11", "Edema": "J81.1", "Consolidation": "R91.8", "Lung Opacity": "R91.8",
             "Lung Lesion": "R91.8", "Fracture": "S22.39XA", "Support Devices": "Z97.8"}
    icd = sorted({codes[n] for n in names if n in codes})
    severity = "normal" if names in ([], ["No Finding"]) else "moderate"
    answer = "See findings; evidence " + sid if "Question: none" not in request.prompt_text else None
    return Reply(body=candidate(report_json(findings, icd, overall_severity=severity, answer=answer,
                                            impression=f"Most similar case {sid} shows: "
                                                       f"{', '.join(names) or 'nothing'}.")))


Script = list[Any]


@dataclass
class FakeGemini:
    """Threaded fake of the Gemini generateContent endpoint; a context manager."""

    script: Script = field(default_factory=lambda: [evidence_report])
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the server is not running - use it as a context manager"
        return f"http://{self.host}:{self._server.server_port}"

    def next_reply(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            index = min(len(self.requests) - 1, len(self.script) - 1)
            entry = self.script[index] if self.script else evidence_report
        if callable(entry):
            entry = entry(request)
        if isinstance(entry, dict):
            entry = Reply(body=entry)
        return entry

    def start(self) -> "FakeGemini":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                match = ROUTE.match(self.path.split("?", 1)[0])
                request = Request("POST", self.path, dict(self.headers.items()), body, raw,
                                  match.group("model") if match else None)
                if not match:
                    with fake._lock:
                        fake.requests.append(request)
                    return self._send(Reply(status=404, body={"error": {"code": 404, "message": "no such route",
                                                                         "status": "NOT_FOUND"}}))
                reply = fake.next_reply(request)
                if reply.delay:
                    time.sleep(reply.delay)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                data = (reply.raw if reply.raw is not None else json.dumps(reply.body)).encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-gemini", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeGemini":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(description="Serve a fake Gemini endpoint answering from the prompt's evidence.")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with FakeGemini(port=args.port) as server:
        print(f"fake Gemini at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
