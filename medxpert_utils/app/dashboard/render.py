"""What the dashboard shows, as plain data: PNG bytes, HTML fragments, CSV and download links.

Pure functions with no widgets, so they are tested alone: the query image shrunk for display, the
gallery of matches (inline thumbnails, score, report snippet, label tags, an ``id`` per card), the
structured report (findings table, impression, severity, suggestions, ICD-10 codes, evidence linked
to the gallery cards) and ``<a download>`` anchors carrying the report JSON and the hits CSV inline.
Every piece of text from a report or a model is HTML-escaped.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io as _io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medxpert_utils.core.notices import DISCLAIMER
from medxpert_utils.core.paths import PROJECT_ROOT, data_dir
from medxpert_utils.speech.transcript import SIDES, Question, Transcript
from medxpert_utils.viz.html import data_uri, esc, thumbnail_uri


def download_link(data: bytes | str, filename: str, mime: str, label: str) -> str:
    """An ``<a download>`` anchor carrying ``data`` inline (works in Voilà, which serves no run files)."""
    return (f'<a class="mx-download" download="{html.escape(filename)}" href="{data_uri(data, mime)}">'
            f"{html.escape(label)}</a>")


def hit_dict(hit: Any) -> dict[str, Any]:
    """A search hit (``search.Hit``, a report's ``RetrievedCase`` or a dict) as a dict."""
    if hasattr(hit, "to_dict"):
        return hit.to_dict()
    if dataclasses.is_dataclass(hit) and not isinstance(hit, type):
        return dataclasses.asdict(hit)
    return dict(hit)


def hits_csv(hits: Sequence[Any]) -> str:
    """Hits as CSV: rank, score, study_id, report, image_path and one column per label."""
    rows = [hit_dict(h) for h in hits]
    labels = sorted({name for row in rows for name in (row.get("labels") or {})})
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "score", "study_id", "report", "image_path", *labels])
    for row in rows:
        tags = row.get("labels") or {}
        writer.writerow([row.get("rank"), f"{float(row.get('score', 0)):.4f}", row.get("study_id"), row.get("report"),
                         row.get("image_path"), *[tags.get(name, "") for name in labels]])
    return buffer.getvalue()


def card_id(study_id: Any) -> str:
    """HTML id of a gallery card, so report evidence can link to it."""
    return "mx-hit-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(study_id))


def resolve_image_path(image_path: str | os.PathLike, run_dir: Path | None = None) -> Path:
    """A hit's image path: absolute as is, else relative to the run, the data cache or the project."""
    path = Path(image_path)
    if path.is_absolute():
        return path
    for base in (run_dir, data_dir(), PROJECT_ROOT):
        if base is not None and (Path(base) / path).exists():
            return Path(base) / path
    return path


CSS = """<style>
.mx-banner{background:#fff3cd;border:1px solid #e0a800;color:#5c4400;padding:6px 10px;border-radius:4px;font-weight:600}
.mx-error{color:#a4161a;font-weight:600}
.mx-note{color:#555;font-size:90%}
.mx-gallery{display:flex;flex-wrap:wrap;gap:8px}
.mx-card{width:190px;border:1px solid #ccc;border-radius:4px;padding:6px;font-size:85%;background:#fff}
.mx-card:target{outline:3px solid #1f77b4}
.mx-card img{width:100%;image-rendering:pixelated;background:#000}
.mx-tag{display:inline-block;background:#e7f0fa;border-radius:3px;padding:0 4px;margin:1px;font-size:85%}
.mx-tag.mx-neg{background:#eee;color:#666;text-decoration:line-through}
.mx-tag.mx-unc{background:#fdf1dc}
.mx-report,.mx-heard,.mx-caption{overflow-wrap:anywhere}
.mx-report table{border-collapse:collapse;margin:4px 0}
.mx-report a,.mx-download{color:#1a5fb4;text-decoration:underline}
.mx-report td,.mx-report th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
.mx-download{margin-right:12px}
.mx-ood{background:#fde2e1;border:1px solid #a4161a;color:#5c0b0e;padding:8px 10px;border-radius:4px}
.mx-unsure{background:#ffe08a;color:inherit;border-bottom:2px dotted #b8860b;padding:0 1px;cursor:help}
.mx-ask{background:#fff8e1;border:1px solid #e0a800;border-radius:4px;padding:4px 8px;margin:4px 0;gap:6px}
.mx-ask-prompt{font-weight:600;color:#5c4400}
</style>"""




def transcript_html(transcript: Transcript, min_confidence: float) -> str:
    """The heard words, each one heard with confidence below ``min_confidence`` marked (the text as is when the
    recogniser gave no words)."""
    if not transcript.words:
        return esc(transcript.text)
    unsure = set(transcript.low_confidence(min_confidence))
    return " ".join(f'<mark class="mx-unsure" title="heard with low confidence">{esc(w.text)}</mark>' if i in unsure
                    else esc(w.text) for i, w in enumerate(transcript.words))


def question_prompt(question: Question, words: Sequence[str]) -> str:
    """One question about a side or level word as plain text, e.g. "Heard 'right' with low confidence: which
    side?" (``words``: the transcript's words, which the question's position counts)."""
    kind = "side" if set(SIDES) & set(question.choices) else "level"
    if not question.heard:
        at = question.position
        where = f" after '{words[at - 1]}'" if 0 < at <= len(words) else f" before '{words[0]}'" if words else ""
        return f"A {kind} word may be missing{where}: which {kind}?"
    if question.reason == "low confidence":
        return f"Heard '{question.heard}' with low confidence: which {kind}?"
    rivals = [c for c in question.choices[1:] if c]
    maybe = f", but it may have been '{rivals[0]}'" if rivals else ""
    return f"Heard '{question.heard}'{maybe}: which {kind}?"


def query_check_html(check: Any) -> str:
    """The warning banner shown instead of the report when the query check finds the query unlike the run's
    radiographs (``retrieval.ood.QueryCheck``)."""
    data = check.to_dict() if hasattr(check, "to_dict") else dict(check)
    what = "image" if getattr(check, "kind", "image") == "image" else "query"
    return (f'<div class="mx-ood" data-score="{float(data["score"]):.4f}"><b>Not answered: this {what} does not look '
            "like the chest radiographs this run was built on.</b> No report was written, so no findings are "
            f"suggested for it.<br><span class='mx-ood-reason'>{esc(data['reason'])}</span><br>"
            "Query with a frontal chest X-ray. The most similar cases are shown on request; they are not evidence "
            "about this query.</div>")


def _label_tags(labels: dict[str, Any] | None) -> str:
    tags = []
    for name, value in (labels or {}).items():
        if value is None or value == "" or (isinstance(value, float) and value != value):
            continue
        cls = {1: "", 0: " mx-neg", -1: " mx-unc"}.get(int(float(value)), "")
        mark = "?" if cls == " mx-unc" else ""
        tags.append(f'<span class="mx-tag{cls}">{esc(name)}{mark}</span>')
    return "".join(tags)


def gallery_html(hits: Sequence[Any], run_dir: Path | None = None, snippet_chars: int = 160) -> str:
    """Cards of the top-K matches: thumbnail, rank and similarity, report snippet, label tags."""
    if not hits:
        return '<p class="mx-note">No matches.</p>'
    cards = []
    for hit in map(hit_dict, hits):
        thumb = thumbnail_uri(str(resolve_image_path(hit.get("image_path", ""), run_dir)))
        img = f'<img alt="match {esc(hit.get("rank"))}" src="{thumb}">' if thumb else ""
        report = str(hit.get("report") or "")
        snippet = report if len(report) <= snippet_chars else report[:snippet_chars].rsplit(" ", 1)[0] + " ..."
        cards.append(
            f'<div class="mx-card" id="{card_id(hit.get("study_id"))}" data-study-id="{esc(hit.get("study_id"))}">'
            f"{img}<div><b>#{esc(hit.get('rank'))}</b> score {float(hit.get('score', 0)):.3f}"
            f" &middot; {esc(hit.get('study_id'))}</div>"
            f'<div title="{esc(report)}">{esc(snippet)}</div>'
            f"<div>{_label_tags(hit.get('labels'))}</div></div>")
    return f'<div class="mx-gallery">{"".join(cards)}</div>'


def _study_links(text: Any, known: set[str]) -> str:
    """Evidence text or list with every study_id of a shown match turned into a link to its card."""
    items = text if isinstance(text, (list, tuple)) else [text]
    out = []
    for item in items:
        escaped = esc(item)
        for sid in sorted(known, key=len, reverse=True):
            token = html.escape(sid)
            if token and token in escaped:
                escaped = re.sub(rf"(?<![\w-]){re.escape(token)}(?![\w-])",
                                 f'<a href="#{card_id(sid)}">{token}</a>', escaped)
        out.append(escaped)
    return ", ".join(out)


def report_html(report: Any, hits: Sequence[Any] = ()) -> str:
    """The structured report as an HTML fragment: findings table, impression, severity, suggestions,
    ICD-10 codes and links from the evidence to the gallery cards."""
    data = report.model_dump(mode="json") if hasattr(report, "model_dump") else dict(report)
    known = {str(hit_dict(h).get("study_id")) for h in hits}
    parts = [f'<div class="mx-report"><p class="mx-banner">{esc(data.get("disclaimer") or DISCLAIMER)}</p>']
    if data.get("question"):
        parts.append(f"<p><b>Question:</b> {esc(data['question'])}<br><b>Answer:</b> {esc(data.get('answer'))}</p>")
    parts.append(f"<p><b>Impression:</b> {esc(data.get('impression'))}<br>"
                 f"<b>Overall severity:</b> {esc(data.get('overall_severity'))}</p>")
    findings = data.get("findings") or []
    if findings:
        rows = "".join(
            f"<tr><td>{esc(f.get('name'))}</td><td>{esc(f.get('status'))}</td><td>{esc(f.get('location'))}</td>"
            f"<td>{esc(f.get('severity'))}</td><td>{_fmt_conf(f.get('confidence'))}</td>"
            f"<td>{_study_links(f.get('evidence'), known)}</td></tr>" for f in findings)
        parts.append("<table class='mx-findings'><tr><th>Finding</th><th>Status</th><th>Location</th><th>Severity</th>"
                     f"<th>Confidence</th><th>Evidence</th></tr>{rows}</table>")
    else:
        parts.append("<p>No findings reported.</p>")
    if data.get("suggestions"):
        parts.append("<p><b>Suggestions:</b></p><ul>"
                     + "".join(f"<li>{esc(s)}</li>" for s in data["suggestions"]) + "</ul>")
    if data.get("icd10"):
        parts.append("<p><b>ICD-10:</b></p><ul class='mx-icd10'>" + "".join(
            f"<li><code>{esc(c.get('code'))}</code> {esc(c.get('description'))}</li>" for c in data["icd10"]) + "</ul>")
    support = data.get("supporting_study_ids") or []
    if support:
        parts.append(f"<p><b>Supporting cases:</b> {_study_links(list(support), known)}</p>")
    parts.append("<p class='mx-note'>Report generated by: "
                 f"<b class='mx-generator'>{esc(data.get('generator'))}</b></p></div>")
    return "".join(parts)


def _fmt_conf(value: Any) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return esc(value)


def to_json(obj: Any) -> str:
    """A report (pydantic model or dict) as indented JSON."""
    if hasattr(obj, "model_dump_json"):
        return obj.model_dump_json(indent=2)
    from medxpert_utils.core.io import json_default

    return json.dumps(obj, indent=2, default=json_default)
