"""The project's labeler against the field's context libraries, on the same reports and the same scoring.

Not a project dependency: run it in a separate environment that has the libraries, e.g.

    python3 -m venv /tmp/medspacy_venv
    /tmp/medspacy_venv/bin/pip install medspacy negspacy "numpy<2" "pandas<3" scikit-learn
    /tmp/medspacy_venv/bin/python benchmarks/bench_labeler_libs.py --gold data/openi_dev_gold.csv

(spaCy 3.7's compiled parts need numpy 1.x.) No spaCy model is downloaded: both pipelines start from a blank
English tokenizer. Every system finds its mentions with the project's phrase tables (``label_phrases``:
``MENTION_PHRASES``, ``SHARED_PHRASES``, and ``NOT_MENTIONS`` to drop look-alikes), so the comparison is of what
each does with a mention once found:

- ``medxpert``: the project's labeler (``label_report``).
- ``medspacy``: medspaCy's default pipeline (PyRuSH sentences, ConText with its default rules). Negated -> 0,
  possible existence -> -1, historical / hypothetical / family -> dropped (variant ``medspacy_keep_history``
  keeps them as positive), else 1.
- ``negspacy``: spaCy's rule sentencizer and negspaCy's NegEx (clinical termset). Negated -> 0, else 1: NegEx has
  no uncertainty.

Mentions aggregate as in CheXpert (positive > uncertain > negative). Writes
benchmarks/results/bench_labeler_libs.json with the figures of benchmarks/bench_labeler.py for each system.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_labeler as bench  # noqa: E402 - after the path set-up

from medxpert_utils.data.label_phrases import MENTION_PHRASES, NOT_MENTIONS, SHARED_PHRASES  # noqa: E402

NOT_A_MENTION = "NOT_A_MENTION"
_BLANK: dict[str, None] = dict.fromkeys(bench.NAMES)


def target_regexes() -> dict[str, str]:
    """Category -> one regex per mapped observation (and one for look-alikes), from the project's tables."""
    regexes: dict[str, list[str]] = {NOT_A_MENTION: list(NOT_MENTIONS)}
    for name in bench.NAMES:
        regexes[name] = sorted(MENTION_PHRASES[name], key=len, reverse=True)
    for phrase, labels in SHARED_PHRASES.items():
        for label in labels:
            if label in regexes:
                regexes[label].insert(0, phrase)
    return {name: r"(?i)\b(?:" + "|".join(f"(?:{p})" for p in parts) + r")(?![\w-])" for name, parts in regexes.items()}


def _combine(labels: dict, name: str, value: int) -> None:
    rank = {1: 2, -1: 1, 0: 0}
    if labels.get(name) is None or rank[value] > rank[labels[name]]:
        labels[name] = value


def medspacy_labeler(keep_history: bool = False) -> Callable[[str], dict]:
    import medspacy
    from medspacy.target_matcher import TargetRule

    nlp = medspacy.load()
    nlp.get_pipe("medspacy_target_matcher").add(
        [TargetRule(name, name, pattern=regex) for name, regex in target_regexes().items()])
    dropped = set() if keep_history else {"is_historical", "is_hypothetical", "is_family"}

    def label(text: str) -> dict:
        labels = dict(_BLANK)
        for ent in nlp(text).ents:
            if ent.label_ == NOT_A_MENTION or any(getattr(ent._, flag) for flag in dropped):
                continue
            _combine(labels, ent.label_, 0 if ent._.is_negated else -1 if ent._.is_uncertain else 1)
        return labels

    return label


def negspacy_labeler() -> Callable[[str], dict]:
    import spacy
    from negspacy.negation import Negex  # noqa: F401 - registers the "negex" factory
    from negspacy.termsets import termset
    from spacy.language import Language
    from spacy.util import filter_spans

    compiled = {name: re.compile(regex) for name, regex in target_regexes().items()}

    @Language.component("medxpert_targets")
    def targets(doc):  # noqa: ANN001, ANN202 - spaCy component signature
        spans = [doc.char_span(m.start(), m.end(), label=name, alignment_mode="expand")
                 for name, regex in compiled.items() for m in regex.finditer(doc.text)]
        doc.ents = filter_spans([span for span in spans if span is not None])
        return doc

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("medxpert_targets")
    nlp.add_pipe("negex", config={"neg_termset": termset("en_clinical").get_patterns(), "ent_types": bench.NAMES})

    def label(text: str) -> dict:
        labels = dict(_BLANK)
        for ent in nlp(text).ents:
            if ent.label_ != NOT_A_MENTION:
                _combine(labels, ent.label_, 0 if ent._.negex else 1)
        return labels

    return label


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gold", type=Path, default=ROOT / "data" / "openi_dev_gold.csv")
    parser.add_argument("--cache", type=Path, default=bench.CACHE)
    parser.add_argument("--out", type=Path, default=bench.RESULTS / "bench_labeler_libs.json")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1, help="speed passes (the libraries are slow)")
    args = parser.parse_args(argv)
    if not args.gold.exists():
        parser.error(f"no gold CSV at {args.gold}: pass --gold PATH or copy the file there (docs/labeler.md)")
    try:
        from loguru import logger  # PyRuSH logs every sentence at DEBUG level

        logger.remove()
    except ImportError:
        pass
    from medxpert_utils.data.labels import label_report

    gold = bench.load_gold(args.gold)
    reports = bench.fetch_reports(args.cache)
    texts = [reports[name] for name in gold.index]
    systems: dict[str, Callable[[], Callable[[str], dict]]] = {
        "medxpert": lambda: label_report,
        "medspacy": medspacy_labeler,
        "medspacy_keep_history": lambda: medspacy_labeler(keep_history=True),
        "negspacy": negspacy_labeler,
    }
    results = {}
    for name, make in systems.items():
        results[name] = bench.evaluate(texts, gold, make(), args.draws, 0, args.repeats)
        bench.print_table(name, results[name])
    versions = {}
    for package in ("spacy", "medspacy", "negspacy"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package only leaves its version out
            pass
    record = {"benchmark": "labeler vs context libraries, same mentions, Open-I hand labels", "gold": args.gold.name,
              "reports": len(texts), "versions": versions, "python": platform.python_version(),
              "speed": f"single process pinned to one core, best of {args.repeats} passes", **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
