"""Side and level words get extra care: a low-confidence one, one a second hypothesis hears differently, and one
the second hypothesis hears but the transcript lacks are each asked about; answers rebuild the query."""

from __future__ import annotations

import pytest

from medxpert_utils.speech.transcript import Question, Transcript, Word, questions


def heard(text: str, confidence: float = 0.9, **low: float) -> list[Word]:
    return [Word(w, low.get(w, confidence)) for w in text.split()]


def test_sure_words_and_an_agreeing_second_hypothesis_ask_nothing():
    assert questions(heard("right upper lobe pneumonia"), "right upper lobe new moan ya".split()) == ()
    # a side word the second hypothesis repeats is not a missing one
    assert questions(heard("is there left pleural effusion"), "is there a left blurry left fusion".split()) == ()


def test_a_side_word_heard_with_low_confidence_is_asked_about():
    (question,) = questions(heard("left pleural effusion", left=0.3), min_confidence=0.5)
    assert question == Question(0, "left", ("left", "right", "bilateral"), "low confidence")
    assert questions(heard("left pleural effusion", left=0.6), min_confidence=0.5) == ()
    # a low-confidence word that is no side or level word is only marked, never asked about
    assert questions(heard("left pleural effusion", pleural=0.1)) == ()


def test_a_level_word_heard_differently_is_asked_about_with_the_rival_first():
    (question,) = questions(heard("right lower lobe pneumonia"), "right upper lobe pneumonia".split())
    assert question.position == 1 and question.heard == "lower" and question.reason == "heard differently"
    assert question.choices == ("lower", "upper", "middle")


def test_a_side_the_transcript_lost_is_asked_where_the_second_hypothesis_put_it():
    # Moonshine spells "right" as a name; PocketSphinx's transcript has no side at all
    (question,) = questions(heard("moderate pneumothorax"), "margaret wright knew mithorex".split())
    assert question == Question(1, "", ("right", "left", "bilateral", ""), "maybe missing")
    assert question.apply(["moderate", "pneumothorax"], "right") == ["moderate", "right", "pneumothorax"]
    assert question.apply(["moderate", "pneumothorax"], "") == ["moderate", "pneumothorax"]
    with pytest.raises(ValueError, match="'upper' is not one of"):
        question.apply(["moderate", "pneumothorax"], "upper")


def test_answers_rebuild_the_query_from_the_last_question_back():
    words = heard("right lower lobe pneumonia", right=0.2)
    transcript = Transcript("right lower lobe pneumonia", "hybrid", 2.0, 0.5, "m", tuple(words),
                            questions(words, "left upper lobe pneumonia".split()))
    assert [q.heard for q in transcript.ask] == ["right", "lower"] and transcript.unsure
    assert transcript.alternatives() == ["right lower lobe pneumonia", "left lower lobe pneumonia",
                                         "bilateral lower lobe pneumonia"]
    chosen = transcript.choose(["left", "upper"])
    assert chosen.text == "left upper lobe pneumonia" and chosen.ask == () and not chosen.unsure
    with pytest.raises(ValueError, match="2 questions, 1 answers"):
        transcript.choose(["left"])
    missing = Transcript("moderate pneumothorax", "hybrid", 1.0, 0.1, "m", tuple(heard("moderate pneumothorax")),
                         (Question(1, "", ("right", "left", "bilateral", ""), "maybe missing"),))
    assert missing.choose(["left"]).text == "moderate left pneumothorax"
    assert missing.choose([""]).text == "moderate pneumothorax"


def test_the_json_carries_each_word_and_question():
    words = heard("left effusion", left=0.25)
    data = Transcript("left effusion", "hybrid", 1.23456, 0.5, "m", tuple(words), questions(words)).to_dict()
    assert data["words"] == [{"text": "left", "confidence": 0.25}, {"text": "effusion", "confidence": 0.9}]
    assert data["ask"] == [{"position": 0, "heard": "left", "choices": ["left", "right", "bilateral"],
                            "reason": "low confidence"}]
    assert data["seconds"] == 1.235
    assert Transcript("a", "whisper", 1.0, 0.1, "m", (Word("a", None),)).to_dict()["words"] == [
        {"text": "a", "confidence": None}]
    assert Transcript("a b", "x", 1.0, 0.1, "m", tuple(heard("a b", b=0.1))).low_confidence(0.5) == [1]
