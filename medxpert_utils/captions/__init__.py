"""BLIP captioning (notebook 04): load or build BLIP, fine-tune it on image -> report, caption, score.

- :mod:`.model`: ``Salesforce/blip-image-captioning-base`` (hub id or local folder) in the real
  profiles - missing weights raise a one-line :class:`MissingModelError`, never random weights - or,
  offline, a tiny BLIP built from ``BlipConfig`` with a WordPiece tokenizer from the training
  reports, saved into ``models/blip_base/`` and reloaded like any hub model; the :class:`Captioner`
  and :func:`caption_split` (``captions.parquet``).
- :mod:`.finetune`: image -> report fine-tuning, best checkpoint by validation loss in ``models/blip/``.
- :mod:`.scores`: corpus BLEU-4 (sacrebleu, as a fraction in [0, 1]), ROUGE-L F (rouge-score) and
  CheXpert-label F1 micro/macro (``metrics/captions.json``).
"""

from medxpert_utils.captions.finetune import (AUX_LABEL_WEIGHT, CaptionCollate, CaptionDataset, TimeAwareCosine,
                                              evaluate_loss, finetune)
from medxpert_utils.captions.model import (TINY, Captioner, available_models, build_tiny_blip, caption_split,
                                           load_blip, model_specs, prepare_base_model, small_model_threads,
                                           tiny_image_processor, train_wordpiece)
from medxpert_utils.captions.scores import (examples_html, label_f1, positive_labels, score_captions, score_run,
                                            scores_table)

__all__ = [
    "AUX_LABEL_WEIGHT", "CaptionCollate", "CaptionDataset", "Captioner", "TINY", "TimeAwareCosine", "available_models",
    "build_tiny_blip", "caption_split", "evaluate_loss", "examples_html", "finetune", "label_f1", "load_blip",
    "model_specs", "positive_labels", "prepare_base_model", "score_captions", "score_run", "scores_table",
    "small_model_threads", "tiny_image_processor", "train_wordpiece",
]
