"""Reports written by Gemini through ``google-genai``, with retries, validation, a cache and a fallback.

- The key comes only from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``; the SDK sends it as the
  ``x-goog-api-key`` header. It is scrubbed from every message this module logs or stores.
- ``llm.base_url`` overrides the endpoint (a proxy, or the fake server in tests); when unset, the
  SDK's own ``GOOGLE_GEMINI_BASE_URL`` environment override still applies.
- The SDK's retries are switched off (``HttpRetryOptions(attempts=1)``) so retries happen once, here:
  on 408/429/5xx, timeouts, connection errors and responses that fail validation, up to
  ``llm.max_retries`` times with exponential backoff (``llm.backoff_s`` doubling, capped at 60 s).
- Validation: the response must parse as :class:`~medxpert_utils.report.schema.LLMReport`, name only
  CheXpert observations, give valid ICD-10-CM codes and cite only retrieved study_ids.
- Valid responses are cached on disk under ``cache/llm/`` keyed by sha256(model, prompt, schema,
  image digest) so a rerun does not call (or bill) again.
- When every attempt fails, the offline reporter writes the report and its ``generator`` says
  ``offline-retrieval (fallback: <reason>)``.
- Privacy: only text is sent unless ``llm.send_image`` is on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from medxpert_utils.core import io
from medxpert_utils.core.errors import MissingModelError
from medxpert_utils.report import icd10
from medxpert_utils.report.context import ReportContext
from medxpert_utils.report.offline import GENERATOR as OFFLINE_GENERATOR
from medxpert_utils.report.offline import RetrievalReporter
from medxpert_utils.report.prompt import SYSTEM_INSTRUCTION, build_prompt
from medxpert_utils.report.schema import DiagnosisReport, LLMReport, from_llm, llm_schema

log = logging.getLogger(__name__)

KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 60.0


def api_key_from_env() -> str | None:
    """The Gemini API key from the environment (``GEMINI_API_KEY`` first), or None."""
    for name in KEY_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class InvalidResponse(ValueError):
    """Gemini answered, but not with a usable report; the message says why (one line)."""


def validate_response(text: str | None, study_ids: list[str]) -> LLMReport:
    """Parse and check one response text against the schema, the observation names, ICD-10-CM and the evidence."""
    if not text or not text.strip():
        raise InvalidResponse("empty response")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidResponse(f"response is not JSON ({exc.msg} at char {exc.pos})") from None
    try:
        parsed = LLMReport.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["loc"] and err["loc"][-1] == "name" and err["loc"][0] == "findings":
            raise InvalidResponse(f"unknown observation {err.get('input')!r} at {loc}") from None
        raise InvalidResponse(f"schema mismatch at {loc or 'top level'}: {err['msg']}") from None
    for code in parsed.icd10_codes:
        if not icd10.is_valid(code):
            raise InvalidResponse(f"invalid ICD-10-CM code {code!r}")
    known = set(study_ids)
    for finding in parsed.findings:
        for sid in finding.evidence:
            if sid not in known:
                raise InvalidResponse(f"finding {finding.name!r} cites study {sid!r}, which was not retrieved")
    return parsed


def cache_key(model: str, prompt: str, schema: dict, image_bytes: bytes | None = None) -> str:
    """sha256 of what determines an answer: model, system + user prompt, response schema, image digest."""
    blob = json.dumps({
        "model": model,
        "prompt": prompt,
        "schema": schema,
        "image": hashlib.sha256(image_bytes).hexdigest() if image_bytes else None,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _transport_kind(exc: BaseException) -> str | None:
    """'timeout', 'connection' or None. By class name along the MRO: google-genai sends through httpx,
    httpx2 or aiohttp depending on what is installed, and each has its own exception classes."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"TimeoutException", "TimeoutError", "ServerTimeoutError"}:
        return "timeout"
    if names & {"TransportError", "ConnectError", "NetworkError", "ClientConnectionError", "ConnectionError"}:
        return "connection"
    return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GeminiReporter:
    """Structured reports from Gemini; falls back to :class:`RetrievalReporter` when Gemini fails."""

    def __init__(self, llm, fallback: RetrievalReporter | None = None, cache_dir: str | os.PathLike | None = None,
                 api_key: str | None = None, sleep: Callable[[float], None] = time.sleep):
        """``llm`` is the params' ``llm`` section (model, base_url, timeout_s, max_retries, backoff_s,
        temperature, send_image, cache)."""
        key = api_key or api_key_from_env()
        if not key:
            raise MissingModelError(
                "Gemini needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment, "
                "or use the offline reporter (--generator offline / report.generator: offline)")
        self._key = key
        self.llm = llm
        self.fallback = fallback or RetrievalReporter()
        self.cache_dir = Path(cache_dir) if (cache_dir and llm.cache) else None
        self._sleep = sleep
        self._client = None
        self.calls = 0  # requests actually sent (cache hits send none)

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "GeminiReporter":
        return cls(cfg.llm, fallback=RetrievalReporter.from_config(cfg), cache_dir=cfg.paths.llm_cache, **kwargs)

    @property
    def generator(self) -> str:
        return f"gemini:{self.llm.model}"

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced, for anything logged, raised or stored."""
        return str(text).replace(self._key, "[redacted]") if self._key else str(text)

    # --- the request ------------------------------------------------------------------------------

    def client(self):
        """The google-genai client (built once): our timeout, the SDK's retries off, base_url only when set."""
        if self._client is None:
            from google import genai
            from google.genai import types

            options = {"timeout": max(1, int(self.llm.timeout_s * 1000)),
                       "retry_options": types.HttpRetryOptions(attempts=1)}
            if self.llm.base_url:
                options["base_url"] = self.llm.base_url
            self._client = genai.Client(api_key=self._key, vertexai=False, http_options=types.HttpOptions(**options))
        return self._client

    def _contents(self, prompt: str, context: ReportContext) -> list:
        contents: list = [prompt]
        if self.llm.send_image and context.image_bytes:
            from google.genai import types

            contents.append(types.Part.from_bytes(data=context.image_bytes, mime_type="image/png"))
        return contents

    def _call(self, contents: list) -> str | None:
        from google.genai import types

        self.calls += 1
        response = self.client().models.generate_content(
            model=self.llm.model,
            contents=contents,
            config=types.GenerateContentConfig(
                system_instruction=SYSTEM_INSTRUCTION,
                response_mime_type="application/json",
                response_schema=LLMReport,
                temperature=self.llm.temperature,
            ),
        )
        return response.text

    # --- the cache --------------------------------------------------------------------------------

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.json" if self.cache_dir else None

    def _cache_read(self, key: str) -> str | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return io.read_json(path)["response"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _cache_write(self, key: str, text: str) -> None:
        path = self._cache_path(key)
        if path is not None:
            io.write_json(path, {"model": self.llm.model, "response": text})

    # --- the report -------------------------------------------------------------------------------

    def report(self, context: ReportContext) -> DiagnosisReport:
        """Ask Gemini (or the cache) for a report on ``context``; fall back to the offline reporter."""
        prompt = build_prompt(context)
        image = context.image_bytes if self.llm.send_image else None
        key = cache_key(self.llm.model, SYSTEM_INSTRUCTION + "\n\n" + prompt, llm_schema(), image)
        cached = self._cache_read(key)
        if cached is not None:
            try:
                return self._build(validate_response(cached, context.study_ids), context)
            except InvalidResponse:
                log.warning("ignoring an invalid cached Gemini response")
        contents = self._contents(prompt, context)
        reason = "no attempt made"
        attempts = self.llm.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                delay = min(self.llm.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                log.warning("Gemini attempt %d/%d failed (%s); retrying in %.1fs", attempt, attempts, reason, delay)
                self._sleep(delay)
            retry, reason, text = self._attempt(contents)
            if text is not None:
                try:
                    parsed = validate_response(text, context.study_ids)
                except InvalidResponse as exc:
                    reason, retry = f"invalid response: {exc}", True
                else:
                    self._cache_write(key, text)
                    return self._build(parsed, context)
            if not retry:
                break
        reason = _one_line(self.scrub(reason))
        log.warning("Gemini failed (%s); using the offline reporter", reason)
        report = self.fallback.report(context)
        report.generator = f"{OFFLINE_GENERATOR} (fallback: {reason})"
        return report

    def _attempt(self, contents: list) -> tuple[bool, str, str | None]:
        """One request: (retryable?, reason when it failed, response text or None)."""
        from google.genai import errors as genai_errors

        try:
            text = self._call(contents)
        except genai_errors.APIError as exc:
            status = f" {exc.status}" if getattr(exc, "status", None) else ""
            return exc.code in RETRY_STATUS, self.scrub(f"Gemini API error {exc.code}{status}"), None
        except Exception as exc:
            kind = _transport_kind(exc)
            if kind == "timeout":
                return True, f"timeout after {self.llm.timeout_s:g}s", None
            if kind == "connection":
                return True, self.scrub(f"connection error ({type(exc).__name__}: {_one_line(exc, 120)})"), None
            # an SDK/client failure we cannot retry: fall back, and say why
            return False, self.scrub(f"{type(exc).__name__}: {_one_line(exc, 160)}"), None
        if text is None:
            return True, "empty response (no text candidate)", None
        return False, "", text

    def _build(self, parsed: LLMReport, context: ReportContext) -> DiagnosisReport:
        codes = []
        for code in parsed.icd10_codes:
            entry = icd10.to_icd10(code)
            if entry.code not in {c.code for c in codes}:
                codes.append(entry)
        return from_llm(parsed, self.generator, context.study_ids, codes, question=context.question,
                        caption=context.caption, query=context.query, query_study_id=context.query_study_id)

