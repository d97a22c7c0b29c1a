"""CheXbert F1: computed through f1chexbert when it can run, otherwise an explicit 'unavailable' with the reason,
and never another metric under its name."""

from __future__ import annotations

import sys
import types

import pytest

from medxpert_utils.models.chexbert import METRIC, chexbert_f1

HYPS = ["Small right pleural effusion.", "No acute process."]
REFS = ["Right pleural effusion.", "Normal chest."]


def _fake_package(monkeypatch, scorer_cls):
    module = types.ModuleType("f1chexbert")
    module.F1CheXbert = scorer_cls
    monkeypatch.setitem(sys.modules, "f1chexbert", module)


def test_off_in_the_offline_profiles_says_why():
    result = chexbert_f1(HYPS, REFS, enabled=False)
    assert result == {"metric": METRIC, "available": False, "reason": result["reason"]}
    assert "eval.chexbert" in result["reason"]


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "f1chexbert", None)  # import fails
    result = chexbert_f1(HYPS, REFS, enabled=True)
    assert not result["available"] and "pip install" in result["reason"]


def test_unreachable_weights_are_reported_not_replaced(monkeypatch):
    class Offline:
        def __init__(self, device=None):
            raise OSError("We couldn't connect to 'https://huggingface.co'\nmore")

    _fake_package(monkeypatch, Offline)
    result = chexbert_f1(HYPS, REFS, enabled=True)
    assert not result["available"] and "OSError" in result["reason"] and "\n" not in result["reason"]
    assert set(result) == {"metric", "available", "reason"}  # no figure of another metric under its name


def test_scores_come_from_the_package(monkeypatch):
    calls = []

    class Scorer:
        def __init__(self, device=None):
            pass

        def __call__(self, hyps, refs):
            calls.append((hyps, refs))
            report = {"micro avg": {"f1-score": 0.5}, "macro avg": {"f1-score": 0.25}}
            report_5 = {"micro avg": {"f1-score": 0.75}, "macro avg": {"f1-score": 0.6}}
            return 0.4, [1, 0], report, report_5

    _fake_package(monkeypatch, Scorer)
    result = chexbert_f1(HYPS, REFS, enabled=True)
    assert calls == [(HYPS, REFS)]
    assert result["available"] and result["micro_f1_14"] == 0.5 and result["macro_f1_5"] == pytest.approx(0.6)
    assert result["n"] == 2 and result["metric"] == METRIC


def test_mismatched_lengths_are_not_scored():
    assert not chexbert_f1(HYPS, REFS[:1], enabled=True)["available"]
