"""Whisper for spoken queries: loading a hub id or folder, or building a published architecture with random weights.

Real profiles load ``asr.model`` (``openai/whisper-small.en`` or a ``save_pretrained`` folder) through
:func:`~medxpert_utils.models.pretrained.load_pretrained`. ``asr.model: random:<hub id>`` (the rehearsal) builds that
model from its published configuration (:mod:`.published`) with random weights into ``models/whisper_base/``, with a
stand-in byte-level BPE tokenizer trained on the run's training reports and Whisper's own special tokens, and
loads that folder the same way. Its transcripts are noise; its time and memory are Whisper small's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxpert_utils.core.errors import UserError
from medxpert_utils.models import published
from medxpert_utils.models.pretrained import ModelKind, load_pretrained, reuse_or_build, save_pretrained

if TYPE_CHECKING:
    from medxpert_utils.core.config import Config

BASE_KEY_NAME = "whisper_base.key.json"  # beside models/whisper_base/
BUILDER_VERSION = 1
VOCAB_TARGET = 4000  # BPE training target of the stand-in tokenizer (the model keeps 51,864 ids)
EOT, SOT, NO_TIMESTAMPS = "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"
# An English-only Whisper's special tokens, in its order after the text vocabulary.
SPECIALS = (EOT, SOT, "<|transcribe|>", "<|translate|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
            NO_TIMESTAMPS)
WHISPER_KIND = ModelKind(name="Whisper", param="asr.model", example="openai/whisper-small.en",
                         notebook="a Whisper download (save_pretrained)",
                         builder="models.whisper.prepare_model(cfg) into models/whisper_base/",
                         offline_tiny="offline PocketSphinx recogniser, asr.backend: pocketsphinx")


def train_tokenizer(reports: Iterable[str], vocab_size: int = VOCAB_TARGET) -> Any:
    """A Whisper tokenizer (GPT-2 byte-level BPE) trained on ``reports``, with an English Whisper's special tokens."""
    from tokenizers import pre_tokenizers
    from transformers import WhisperTokenizer

    texts = [str(r) for r in reports if isinstance(r, str) and r.strip()]
    if not texts:
        raise UserError("no training reports to build the stand-in Whisper tokenizer from - check the manifest's "
                        "train split")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    seed = WhisperTokenizer(vocab={EOT: 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}, merges=[])
    tokenizer = seed.train_new_from_iterator(texts, vocab_size=vocab_size, show_progress=False)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    return tokenizer


def build_random_whisper(hub_id: str, reports: Iterable[str], out_dir: str | os.PathLike, seed: int) -> Path:
    """Build ``hub_id``'s architecture from its published configuration with random weights; save it.

    The generation config is an English-only Whisper's (start of transcript, no timestamps, stop at end of text),
    with the special ids of the stand-in tokenizer, and never picks an id that tokenizer lacks.
    """
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    entry = published.PUBLISHED[hub_id]
    tokenizer = train_tokenizer(reports)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIALS}
    vocab = entry.config["vocab_size"]
    if len(tokenizer) > vocab:
        raise RuntimeError(f"stand-in tokenizer of {len(tokenizer)} tokens exceeds {hub_id}'s vocabulary")
    config = WhisperConfig(**entry.config, bos_token_id=ids[EOT], eos_token_id=ids[EOT], pad_token_id=ids[EOT],
                           decoder_start_token_id=ids[SOT], begin_suppress_tokens=None, suppress_tokens=None)
    model = published.seeded_model(WhisperForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids[SOT], bos_token_id=ids[EOT], eos_token_id=ids[EOT], pad_token_id=ids[EOT],
        no_timestamps_token_id=ids[NO_TIMESTAMPS], is_multilingual=False,
        max_length=entry.config["max_target_positions"], begin_suppress_tokens=[ids[EOT]],
        # As Whisper's own list does, never the task and language-model specials inside a transcript.
        suppress_tokens=[ids[t] for t in SPECIALS[2:-1]] + published.suppressed_ids(vocab, len(tokenizer)))
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(**entry.processor), tokenizer=tokenizer)
    return save_pretrained(model, processor, out_dir)


def prepare_model(cfg: "Config") -> str:
    """The Whisper spec to load: ``asr.model`` itself, or for ``random:<hub id>`` the folder built (once per
    training reports and seed) in ``models/whisper_base/``."""
    import transformers

    spec = cfg.asr.model
    if not published.is_random(spec):
        return spec
    hub_id = published.hub_id(spec, "whisper", "asr.model")
    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    reports = frame.loc[frame["split"] == "train", "report"].fillna("").astype(str).tolist()
    out = cfg.paths.whisper_base
    key = {"train_reports_sha256": hashlib.sha256("\n\x00".join(reports).encode()).hexdigest(), "random": spec,
           "seed": cfg.seed, "transformers": transformers.__version__, "builder": BUILDER_VERSION}
    return reuse_or_build(out, out.with_name(BASE_KEY_NAME), key,
                          lambda: build_random_whisper(hub_id, reports, out, cfg.seed))


def load_whisper(spec: str | os.PathLike, device: Any = None) -> tuple[Any, Any]:
    """Whisper and its processor (eval mode, float32) from a hub id or a ``save_pretrained`` folder."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    return load_pretrained(spec, AutoModelForSpeechSeq2Seq, AutoProcessor, WHISPER_KIND, device)
