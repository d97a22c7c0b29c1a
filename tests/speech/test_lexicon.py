"""Pronunciations: espeak-ng's IPA mapped to CMU phones, the curated radiology words, and every word of the demo
reports' language pronounceable with phones the acoustic model knows."""

from __future__ import annotations

import numpy as np
import pytest

from medxpert_utils.data.synthetic.dataset import sample_findings
from medxpert_utils.data.synthetic.reports import compose_report
from medxpert_utils.speech import language, lexicon


@pytest.mark.parametrize("ipa, phones", [
    ("nˈuːməθˌoːɹæks", "N UW M AH TH AO R AE K S"),  # pneumothorax
    ("ɪfjˈuːʒən", "IH F Y UW ZH AH N"),  # effusion
    ("lˈɪŋɡjʊlə", "L IH NG G Y UH L AH"),  # lingula
    ("kˈɑːɹdɪˌoʊmɪɡəli", "K AA R D IH OW M IH G AH L IY"),  # cardiomegaly
    ("tʃˈɛst", "CH EH S T"),
    ("dʒˈʌŋkʃən", "JH AH NG K SH AH N"),
])
def test_ipa_maps_to_cmu_phones(ipa, phones):
    assert lexicon.ipa_to_cmu(ipa) == phones


def test_an_unknown_ipa_symbol_is_refused():
    with pytest.raises(ValueError, match="no CMU phone"):
        lexicon.ipa_to_cmu("kʘa")


def test_curated_pronunciations_use_the_acoustic_models_phones():
    for word, prons in lexicon.CURATED.items():
        for phones in prons:
            assert set(phones.split()) <= lexicon.PHONES, word


def test_radiology_words_missing_from_cmudict_are_curated():
    cmu = lexicon.cmudict()
    for word in ("pneumothorax", "cardiomegaly", "atelectasis", "costophrenic", "cardiomediastinal"):
        assert word not in cmu and word in lexicon.CURATED
    found, missing = lexicon.pronunciations(["pneumothorax", "zzqxv"], use_espeak=False)
    assert found["pneumothorax"][0] == lexicon.CURATED["pneumothorax"][0] and missing == ["zzqxv"]


def test_espeak_pronounces_what_nothing_else_does():
    assert lexicon.espeak_available(), "espeak-ng is missing: apt-get install espeak-ng (./run_all.sh --test does)"
    found, missing = lexicon.pronunciations(["bronchiectatic", "lung"])
    assert missing == [] and set(" ".join(found["bronchiectatic"]).split()) <= lexicon.PHONES
    assert found["bronchiectatic"][0].startswith("B R AA NG K")
    assert found["lung"] == lexicon.cmudict()["lung"]  # CMUdict's own word is not re-pronounced


def test_every_word_of_the_demo_language_is_pronounceable():
    rng = np.random.default_rng(0)
    reports = [text for _ in range(300) for text in compose_report(sample_findings(rng), rng)[:2]]
    vocab = sorted({w for s in language.corpus(reports) for w in s.split()})
    found, missing = lexicon.pronunciations(vocab)
    assert missing == [] and len(found) == len(vocab)
    for prons in found.values():
        for phones in prons:
            assert phones and set(phones.split()) <= lexicon.PHONES
