"""Word error rate of transcripts, by jiwer (word-level edit distance: substitutions, deletions, insertions over the
reference words), after the same normalisation the recogniser's language uses (:func:`.language.words`)."""

from __future__ import annotations

from collections.abc import Sequence

from medxpert_utils.speech.language import words


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total edits over total reference words (texts normalised to spoken words first)."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    refs = [" ".join(words(text)) for text in references]
    if not any(refs):
        raise ValueError("the references hold no words")
    if not all(refs):
        raise ValueError("a reference holds no words - every spoken query needs its text")
    return float(jiwer.wer(refs, [" ".join(words(text)) for text in hypotheses]))
