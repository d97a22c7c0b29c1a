"""BLIP captioning (notebook 04): fine-tune BLIP on image -> report, caption a split, score the captions.

- :mod:`.model`: the :class:`Captioner` and :func:`caption_split` (``captions.parquet``); the BLIP
  models themselves (``Salesforce/blip-image-captioning-base`` from a hub id or folder, or the tiny
  offline BLIP) load through :mod:`medxpert_utils.models.blip`.
- :mod:`.finetune`: image -> report fine-tuning, best checkpoint by validation loss in ``models/blip/``.
- :mod:`.scores`: corpus BLEU-4 (sacrebleu, as a fraction in [0, 1]), ROUGE-L F (rouge-score) and
  CheXpert-label F1 micro/macro (``metrics/captions.json``).
"""

from medxpert_utils.captions.finetune import (
                                              AUX_LABEL_WEIGHT,
                                              CaptionCollate,
                                              CaptionDataset,
                                              TimeAwareCosine,
                                              evaluate_loss,
                                              finetune,
)
from medxpert_utils.captions.model import Captioner, available_models, caption_split
from medxpert_utils.captions.scores import examples_html, positive_labels, score_captions, score_run, scores_table

__all__ = [
    "AUX_LABEL_WEIGHT", "CaptionCollate", "CaptionDataset", "Captioner", "TimeAwareCosine", "available_models",
    "caption_split", "evaluate_loss", "examples_html", "finetune", "positive_labels", "score_captions", "score_run",
    "scores_table",
]
