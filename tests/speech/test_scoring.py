from __future__ import annotations

import pytest

from medxpert_utils.speech.scoring import edit_distance, word_error_rate


@pytest.mark.parametrize("ref, hyp, distance", [
    ("a b c", "a b c", 0),
    ("a b c", "a x c", 1),  # substitution
    ("a b c", "a c", 1),  # deletion
    ("a b c", "a b c d", 1),  # insertion
    ("a b c", "", 3),
    ("", "a b", 2),
    ("left pleural effusion", "the pleural effusion here", 2),
])
def test_edit_distance(ref, hyp, distance):
    assert edit_distance(ref.split(), hyp.split()) == distance


def test_corpus_wer_is_edits_over_reference_words_after_normalising():
    # "Left pleural effusion?" is "left pleural effusion"; "8th" is "eighth": one deletion in 3 + 2 words
    assert word_error_rate(["Left pleural effusion?", "8th rib"], ["left pleural effusion", "rib"]) == 1 / 5
    assert word_error_rate(["signs of pneumonia"], ["signs of pneumonia"]) == 0.0
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])
    with pytest.raises(ValueError):
        word_error_rate(["?"], ["a"])
