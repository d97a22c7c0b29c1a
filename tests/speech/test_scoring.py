from __future__ import annotations

import pytest

from medxpert_utils.speech.scoring import word_error_rate


@pytest.mark.parametrize("ref, hyp, wer", [
    ("a b c", "a b c", 0.0),
    ("a b c", "a x c", 1 / 3),  # substitution
    ("a b c", "a c", 1 / 3),  # deletion
    ("a b c", "a b c d", 1 / 3),  # insertion
    ("a b c", "", 1.0),  # nothing heard
    ("left pleural effusion", "the pleural effusion here", 2 / 3),
])
def test_wer_counts_substitutions_deletions_and_insertions(ref, hyp, wer):
    assert word_error_rate([ref], [hyp]) == pytest.approx(wer)


def test_corpus_wer_is_edits_over_reference_words_after_normalising():
    # "Left pleural effusion?" is "left pleural effusion"; "8th" is "eighth": one deletion in 3 + 2 words
    assert word_error_rate(["Left pleural effusion?", "8th rib"], ["left pleural effusion", "rib"]) == 1 / 5
    assert word_error_rate(["signs of pneumonia"], ["signs of pneumonia"]) == 0.0
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])
    with pytest.raises(ValueError):
        word_error_rate(["?"], ["a"])
