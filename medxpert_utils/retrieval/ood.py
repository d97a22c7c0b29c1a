"""Know when not to answer: is a query like the run's chest radiographs?

A query image is scored against the run's training images in the CLIP image-embedding space, after two cheap
gates:

* **colour**: a radiograph is grey; a photo, a tinted scan or a colour DICOM is not (mean chroma above
  params ``query_check.colour_limit``);
* **DICOM tags**, when the query is DICOM: Modality must be a radiograph (CR, DX, DR, RG), BodyPartExamined (when
  set) the chest, ViewPosition (when set) not lateral;
* **score**: ``mahalanobis`` (default) is the distance to a Gaussian fitted to the training embeddings (Ledoit-Wolf
  covariance); ``knn`` is the deep-kNN score of Sun et al. (2022), the cosine distance ``1 - cos`` from
  the L2-normalised query embedding to its ``k``-th nearest training image. Higher is less like the corpus.
  benchmarks/bench_ood.py compares the two: on the demo run Mahalanobis separates better (AUROC 0.993 against
  0.966-0.970 for k in 1..20) and keeps more of the test split (96.7% against 91-93%).

The threshold is calibrated on the validation split (params ``query_check.accept``, 95% of validation images
accepted) and stored beside the embeddings as ``embeddings/<model>/ood.json``, with what a query's check reads in
``ood.npz`` (:class:`Reference`: the training rows, their Gaussian, the corpus vocabulary), so a query reads no
corpus table and fits nothing (scikit-learn calibrates, it does not check); notebook 02 writes both
(:func:`calibrate_run`), and a run without them (or with stale ones) gets them on first use.

Text queries get a vocabulary check: the share of the query's content words (English stop words left out) that no
report of the corpus uses; a query none of whose words a report uses is flagged.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core import io, stages
from medxpert_utils.core.errors import RunNotReadyError, UserError
from medxpert_utils.retrieval.stop_words import ENGLISH_STOP_WORDS

if TYPE_CHECKING:
    from medxpert_utils.core.config import Config
    from medxpert_utils.data.images import ImageFacts

OOD_FILE = "ood.json"
REFERENCE_FILE = "ood.npz"  # beside ood.json: what a query's check reads (see Reference)
OOD_VERSION = "ood-v1"
METHODS = ("knn", "mahalanobis")
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "TORSO")
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE LATERAL"})
TEXT_THRESHOLD = 0.5  # text: flagged when more than half of the content words are unknown to the corpus
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class QueryCheck:
    """The verdict on one query. ``score`` and ``threshold``: higher score is less like the corpus; the query is
    in distribution when ``score <= threshold`` and no gate refused it. ``reason`` says why, in one sentence."""

    in_distribution: bool
    score: float
    threshold: float
    reason: str
    kind: str = "image"  # image, text

    def to_dict(self) -> dict[str, Any]:
        """The contract keys (docs/contracts.md): in_distribution, score, threshold, reason."""
        return {"in_distribution": bool(self.in_distribution), "score": round(float(self.score), 6),
                "threshold": round(float(self.threshold), 6), "reason": self.reason}

    def message(self) -> str:
        """One line for a user: what is wrong and what they can do."""
        what = "query image" if self.kind == "image" else "text query"
        return (f"the {what} does not look like this run's chest radiographs ({self.reason}) - no findings "
                "written; query with a frontal chest X-ray, or pass --force to report anyway")


# --- scores ---------------------------------------------------------------------------------------------------

def knn_scores(bank: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False,
               chunk: int = 1024) -> np.ndarray:
    """Deep-kNN score of each query: ``1 - cos`` to its ``k``-th nearest row of ``bank`` (both L2-normalised).

    ``exclude_self`` drops each query's best match (when the queries are the bank itself).
    """
    bank = np.asarray(bank, dtype=np.float32)
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    kk = min(int(k) + int(exclude_self), len(bank))
    if kk < 1:
        raise RunNotReadyError("the query check has no training images to compare with - check embed.corpus_splits")
    out = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ bank.T
        kth = np.partition(-sims, kk - 1, axis=1)[:, kk - 1]
        out[start:start + chunk] = 1.0 + kth  # -(-cos) -> 1 - cos
    return out


@dataclass
class Gaussian:
    """Mean and precision of the training embeddings (Ledoit-Wolf shrinkage: stable with few rows)."""

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, bank: np.ndarray) -> "Gaussian":
        from sklearn.covariance import LedoitWolf  # calibration only: a query reads the saved fit (Reference)

        model = LedoitWolf().fit(np.asarray(bank, dtype=np.float64))
        return cls(model.location_, model.precision_)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        diff = np.atleast_2d(np.asarray(queries, dtype=np.float64)) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, self.precision, diff), 0.0))


def scores(method: str, bank: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Scores of ``queries`` against ``bank`` with ``method`` (knn or mahalanobis); higher = less like the bank."""
    if method == "knn":
        return knn_scores(bank, queries, k)
    if method == "mahalanobis":
        return Gaussian.fit(bank).scores(queries)
    raise UserError(f"unknown query_check.method '{method}' - choose {' or '.join(METHODS)}")


# --- gates ----------------------------------------------------------------------------------------------------

def gate_reason(facts: "ImageFacts | None", colour_limit: float) -> str | None:
    """Why the cheap gates refuse an image (colour, DICOM modality, body part, view), or None."""
    if facts is None:
        return None
    if facts.colourfulness > colour_limit:
        return (f"a colour image (mean chroma {facts.colourfulness:.2f} > {colour_limit:.2f}); "
                "radiographs are grey")
    if facts.dicom:
        if facts.modality and facts.modality not in RADIOGRAPH_MODALITIES:
            return f"DICOM Modality {facts.modality}, not a radiograph (CR/DX)"
        if facts.body_part and not any(part in facts.body_part for part in CHEST_PARTS):
            return f"DICOM BodyPartExamined {facts.body_part}, not the chest"
        if facts.view and facts.view in LATERAL_VIEWS:
            return f"DICOM ViewPosition {facts.view}: a lateral view, the corpus is frontal"
    return None


# --- calibration ----------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """What ``ood.json`` holds: the method, its threshold and how it was calibrated."""

    method: str
    k: int
    threshold: float
    accept: float
    colour_limit: float
    n_bank: int
    n_calibration: int
    calibration_rows: str  # "val split" or "held-out training rows"
    val_accepted: float
    embeddings_key: str
    version: str = OOD_VERSION

    def matches(self, cfg: "Config", key: str) -> bool:
        qc = cfg.query_check
        return (self.version == OOD_VERSION and self.embeddings_key == key and self.method == qc.method
                and self.k == qc.k and self.accept == qc.accept and self.colour_limit == qc.colour_limit)


def split_bank(rows_split: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Row positions of the reference bank (training images) and of the calibration set (validation images);
    without a val split in the corpus, 15% of the training rows are held out for calibration."""
    split = np.asarray(rows_split).astype(str)
    bank = np.flatnonzero(split == "train")
    val = np.flatnonzero(split == "val")
    if len(bank) == 0:  # a corpus without training rows: everything but val is the reference
        bank = np.flatnonzero(split != "val")
    if len(val) == 0:
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(bank)
        n_val = max(1, int(round(0.15 * len(bank))))
        return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val]), "held-out training rows"
    return bank, val, "val split"


def calibrate(bank: np.ndarray, calibration: np.ndarray, method: str = "knn", k: int = 10,
              accept: float = 0.95) -> tuple[float, np.ndarray]:
    """The threshold that accepts ``accept`` of the calibration images, and their scores."""
    values = scores(method, bank, calibration, k)
    return accepting(values, accept), values


def accepting(values: np.ndarray, accept: float) -> float:
    """The threshold that accepts the share ``accept`` of the scores ``values``."""
    return float(np.quantile(values, accept, method="higher"))


@dataclass
class Reference:
    """What a query's check reads besides ``ood.json``, saved beside it as ``ood.npz`` so that a query reads no
    corpus table and fits nothing: the corpus rows of the training images compared with (``bank_rows``), their
    Gaussian (``mean``, ``precision``; the mahalanobis method) and the words of the corpus reports (``vocabulary``),
    with the ``embeddings_key`` they belong to."""

    bank_rows: np.ndarray
    vocabulary: frozenset[str]
    gaussian: Gaussian | None = None

    @classmethod
    def build(cls, corpus: Any, cfg: "Config", bank_rows: np.ndarray | None = None) -> "Reference":
        """From the loaded corpus (:func:`~medxpert_utils.retrieval.store.load_embeddings`); fits the Gaussian when
        ``query_check.method`` is mahalanobis."""
        if bank_rows is None:
            bank_rows = split_bank(corpus.rows["split"].to_numpy(), cfg.seed)[0]
        gaussian = (Gaussian.fit(np.asarray(corpus.image)[bank_rows]) if cfg.query_check.method == "mahalanobis"
                    else None)
        return cls(np.asarray(bank_rows, dtype=np.int64), report_vocabulary(corpus.rows["report"]), gaussian)

    def save(self, path: Path, embeddings_key: str) -> None:
        arrays = {"embeddings_key": np.str_(embeddings_key), "bank_rows": self.bank_rows,
                  "vocabulary": np.array(sorted(self.vocabulary), dtype=str)}
        if self.gaussian is not None:
            arrays.update(mean=self.gaussian.mean, precision=self.gaussian.precision)
        with io.atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: Path, calibration: Calibration) -> "Reference | None":
        """The reference saved at ``path`` when it belongs to ``calibration`` (same embeddings, and a Gaussian when
        the method needs one), else None."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["embeddings_key"]) != calibration.embeddings_key:
                    return None
                gaussian = Gaussian(saved["mean"], saved["precision"]) if "mean" in saved else None
                reference = cls(saved["bank_rows"], frozenset(saved["vocabulary"].tolist()), gaussian)
        except (OSError, ValueError, KeyError):
            return None
        if calibration.method == "mahalanobis" and gaussian is None:
            return None
        return reference


def calibrate_run(cfg: "Config", model: str = "fine_tuned") -> Calibration:
    """Calibrate the query check of ``model`` on the run's validation images; writes ``embeddings/<model>/ood.json``
    and, before it, what a query's check reads (:class:`Reference`, ``ood.npz``).

    Notebook 02 calls it after embedding; :meth:`QueryChecker.from_run` calls it when the file is missing or stale.
    """
    return _calibrate(cfg, model, _corpus(cfg, model))[0]


def _corpus(cfg: "Config", model: str) -> Any:
    from medxpert_utils.retrieval.store import load_embeddings

    try:
        return load_embeddings(cfg.paths.embeddings(model), corpus=True, mmap=True)
    except RunNotReadyError:
        raise stages.missing(f"run '{cfg.run_name}' has no {model} embeddings for the query check", "02",
                             cfg.run_name) from None


def _calibrate(cfg: "Config", model: str, corpus: Any) -> tuple[Calibration, Reference]:
    qc = cfg.query_check
    bank_rows, val_rows, where = split_bank(corpus.rows["split"].to_numpy(), cfg.seed)
    image = np.asarray(corpus.image)
    reference = Reference.build(corpus, cfg, bank_rows)  # the Gaussian fitted once: threshold and queries
    values = (reference.gaussian.scores(image[val_rows]) if reference.gaussian is not None
              else scores(qc.method, image[bank_rows], image[val_rows], qc.k))
    threshold = accepting(values, qc.accept)
    result = Calibration(method=qc.method, k=qc.k, threshold=threshold, accept=qc.accept,
                         colour_limit=qc.colour_limit, n_bank=len(bank_rows), n_calibration=len(val_rows),
                         calibration_rows=where, val_accepted=float(np.mean(values <= threshold)),
                         embeddings_key=str(corpus.cache_key.get("key", "")))
    try:
        reference.save(reference_file(cfg, model), result.embeddings_key)
        io.write_json(ood_file(cfg, model), asdict(result))
    except OSError:  # a read-only shared run: the check still works, calibrated in memory
        pass
    return result, reference


def read_calibration(cfg: "Config", model: str = "fine_tuned") -> Calibration | None:
    """The saved calibration when it matches the embeddings and params, else None."""
    from medxpert_utils.retrieval.store import CACHE_KEY_FILE

    try:
        saved = io.read_json(ood_file(cfg, model))
        key = str(io.read_json(cfg.paths.embeddings(model) / CACHE_KEY_FILE).get("key", ""))
        calibration = Calibration(**saved)
    except (OSError, ValueError, TypeError):
        return None
    return calibration if calibration.matches(cfg, key) else None


# --- the checker ----------------------------------------------------------------------------------------------

class QueryChecker:
    """The query check of one run and model: gates, the calibrated score, and the corpus vocabulary for text."""

    def __init__(self, bank: np.ndarray, calibration: Calibration, vocabulary: set[str] | frozenset[str] = frozenset(),
                 gaussian: Gaussian | None = None):
        self.calibration = calibration
        self.bank = np.asarray(bank, dtype=np.float32)
        self.vocabulary = frozenset(vocabulary)
        if calibration.method == "mahalanobis" and gaussian is None:
            gaussian = Gaussian.fit(self.bank)
        self._gaussian = gaussian if calibration.method == "mahalanobis" else None

    @classmethod
    def from_run(cls, run: "str | os.PathLike | Config", model: str = "fine_tuned") -> "QueryChecker":
        """The checker of a run's ``model`` embeddings from ``ood.json`` and ``ood.npz`` (no corpus table read, nothing
        fitted); calibrated first when they are missing or stale, the reference rebuilt (and saved) for a run
        calibrated before it was saved."""
        from medxpert_utils.core import config
        from medxpert_utils.retrieval.store import CORPUS_DIR

        cfg = run if hasattr(run, "paths") else config.from_run(run)
        calibration = read_calibration(cfg, model)
        reference = Reference.load(reference_file(cfg, model), calibration) if calibration else None
        if calibration is None:
            calibration, reference = _calibrate(cfg, model, _corpus(cfg, model))
        elif reference is None:
            reference = Reference.build(_corpus(cfg, model), cfg)
            try:
                reference.save(reference_file(cfg, model), calibration.embeddings_key)
            except OSError:  # a read-only shared run: rebuilt by the next process
                pass
        vectors = cfg.paths.embeddings(model) / CORPUS_DIR / "image.npy"
        if not vectors.is_file():
            _corpus(cfg, model)  # says which stage to run
        image = np.load(vectors, mmap_mode="r")
        return cls(image[reference.bank_rows], calibration, reference.vocabulary, reference.gaussian)

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """Scores of L2-normalised image embeddings (n, dim); higher is less like the training images."""
        if self._gaussian is not None:
            return self._gaussian.scores(vectors)
        return knn_scores(self.bank, vectors, self.calibration.k)

    def check_vector(self, vector: np.ndarray, facts: "ImageFacts | None" = None) -> QueryCheck:
        """The verdict on one image from its embedding (1, dim) and what the file said about itself."""
        cal = self.calibration
        score = float(self.score(vector)[0])
        gate = gate_reason(facts, cal.colour_limit)
        if gate:
            return QueryCheck(False, score, cal.threshold, gate)
        name = f"distance to the {cal.k}-th nearest training image" if cal.method == "knn" else \
            "distance to the training images' Gaussian"
        detail = f"{cal.method} score {score:.3f} {'<=' if score <= cal.threshold else '>'} threshold " \
                 f"{cal.threshold:.3f} ({name}; the threshold accepts {cal.accept:.0%} of validation images)"
        if score > cal.threshold:
            return QueryCheck(False, score, cal.threshold, f"unlike the training images: {detail}")
        return QueryCheck(True, score, cal.threshold, f"like the training images: {detail}")

    def check_text(self, query: str) -> QueryCheck:
        """The vocabulary check of a text query (see :func:`text_check`)."""
        return text_check(query, self.vocabulary)


def report_vocabulary(reports: Any) -> frozenset[str]:
    """The lower-case words of the corpus reports."""
    words: set[str] = set()
    for text in dict.fromkeys(str(r) for r in reports):  # each distinct report once
        words.update(_WORD.findall(text.lower()))
    return frozenset(words)


def content_words(query: str) -> list[str]:
    """The query's lower-case words without English stop words (scikit-learn's list, :mod:`.stop_words`)."""
    return [w for w in _WORD.findall(str(query).lower()) if w not in ENGLISH_STOP_WORDS]


def text_check(query: str, vocabulary: set[str] | frozenset[str]) -> QueryCheck:
    """Score = share of the query's content words that no corpus report uses; flagged above one half (and always
    when the query has no content word the reports use)."""
    words = content_words(query)
    if not words:
        return QueryCheck(False, 1.0, TEXT_THRESHOLD, "no content words (only stop words or no letters)", "text")
    unknown = [w for w in words if w not in vocabulary]
    score = len(unknown) / len(words)
    if score > TEXT_THRESHOLD:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        return QueryCheck(False, score, TEXT_THRESHOLD,
                          f"{len(unknown)} of {len(words)} content words are in no report of the corpus ({shown}); "
                          "ask about radiology findings", "text")
    return QueryCheck(True, score, TEXT_THRESHOLD,
                      f"{len(words) - len(unknown)} of {len(words)} content words appear in the corpus reports", "text")


def describe(calibration: Calibration) -> dict[str, Any]:
    """One table row for notebook 02: method, k, threshold and the share of validation images accepted."""
    return {"method": calibration.method, "k": calibration.k, "threshold": round(calibration.threshold, 4),
            "calibrated on": f"{calibration.n_calibration} {calibration.calibration_rows}",
            "reference images": calibration.n_bank, "val accepted": round(calibration.val_accepted, 3)}


def ood_file(cfg: "Config", model: str = "fine_tuned") -> Path:
    return cfg.paths.embeddings(model) / OOD_FILE


def reference_file(cfg: "Config", model: str = "fine_tuned") -> Path:
    return cfg.paths.embeddings(model) / REFERENCE_FILE
