"""The run's language for the recogniser: normalised as spoken, the labeler's literal phrases, query forms."""

from __future__ import annotations

import pytest

from medxpert_utils.speech import language


@pytest.mark.parametrize("text, spoken", [
    ("4.1 cm left upper lobe mass.", "four point one cm left upper lobe mass"),
    ("Displaced left 8th rib fracture.", "displaced left eighth rib fracture"),
    ("Left-sided PICC; no pneumothorax?", "left sided picc no pneumothorax"),
    ("Normal chest X-ray, 21st.", "normal chest x ray twenty first"),
    ("Patient's 105", "patients one hundred five"),
])
def test_normalise_as_spoken(text, spoken):
    assert language.normalise(text) == spoken


@pytest.mark.parametrize("pattern, phrases", [
    (r"pleural (?:effusion|fluid)", ["pleural effusion", "pleural fluid"]),
    (r"opacit(?:y|ies)", ["opacities", "opacity"]),
    (r"(?:central )?venous catheter", ["central venous catheter", "venous catheter"]),
    (r"enlarged \w+ heart", []),  # a wildcard: no literal phrase
])
def test_literal_phrases_of_labeler_patterns(pattern, phrases):
    assert language.literal_phrases(pattern) == phrases


def test_queries_ask_for_every_finding_on_each_side():
    queries = set(language.queries())
    for query in ("left pleural effusion", "signs of pneumonia", "is there cardiomegaly", "right pneumothorax",
                  "bilateral pleural effusion", "no acute cardiopulmonary process"):
        assert query in queries


def test_corpus_is_report_sentences_then_queries():
    sentences = language.corpus(["Small right pleural effusion. No pneumothorax.", None])
    assert sentences[:2] == ["small right pleural effusion", "no pneumothorax"]
    assert len(sentences) == 2 + language.QUERY_WEIGHT * len(language.queries())
    assert len(language.corpus([], query_weight=1)) == len(language.queries())
