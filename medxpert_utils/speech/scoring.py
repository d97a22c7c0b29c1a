"""Word error rate: word-level edit distance (substitutions, deletions, insertions) over the reference words,
after the same normalisation the recogniser's language uses (:func:`.language.words`)."""

from __future__ import annotations

from collections.abc import Sequence

from medxpert_utils.speech.language import words


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[len(hyp)]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total edits over total reference words (texts normalised to spoken words first)."""
    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    edits = total = 0
    for ref, hyp in zip(references, hypotheses):
        ref_words = words(ref)
        edits += edit_distance(ref_words, words(hyp))
        total += len(ref_words)
    if total == 0:
        raise ValueError("the references hold no words")
    return edits / total
