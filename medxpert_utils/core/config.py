"""Params schema and loading.

A run is described by one YAML file under ``params/`` plus optional dotted overrides
(``{"train.lr": 1e-5}``). :func:`load` validates both with the pydantic models below
(unknown keys and bad values fail naming the key) and returns a :class:`Config` that
also knows its run folder. Secrets are never params: API keys come from the environment.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import PROJECT_ROOT, RunPaths, resolve_run_dir

# A model spec "random:<hub id>": that model's published architecture with random weights (models.published).
RANDOM_PREFIX = "random:"


class ConfigError(UserError, ValueError):
    """A params file or override is wrong; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class SplitRatios(_Section):
    train: float = Field(0.7, gt=0, lt=1, description="Fraction of patients in the training split.")
    val: float = Field(0.15, ge=0, lt=1, description="Fraction of patients in the validation split.")
    test: float = Field(0.15, gt=0, lt=1, description="Fraction of patients in the test split.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitRatios":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class DataParams(_Section):
    source: Literal["demo", "mimic_hf", "mimic_cxr_jpg", "iu_xray", "csv"] = Field(
        "demo", description="Dataset source: demo (synthetic, offline), mimic_hf, mimic_cxr_jpg, iu_xray or csv."
    )
    n_studies: int = Field(2000, ge=10, description="demo: number of synthetic studies to generate.")
    image_size: int = Field(128, ge=32, le=2048, description="demo: side of the generated square images in pixels.")
    images_per_study_max: int = Field(1, ge=1, le=4, description="demo: most images (views) per study.")
    hf_dataset: str = Field("itsanmolgupta/mimic-cxr-dataset",
                            description="mimic_hf: Hugging Face dataset id or local folder.")
    hf_split: str = Field("train", description="mimic_hf: split of the Hugging Face dataset to read.")
    hf_revision: str | None = Field(None, description="mimic_hf: dataset revision (commit or tag) for reproducibility.")
    root: str | None = Field(
        None, description="mimic_cxr_jpg / iu_xray / csv: folder holding the dataset ('data/...' resolves inside the "
        "dataset cache, other relative paths from the project root)."
    )
    reports_root: str | None = Field(None, description="mimic_cxr_jpg: folder of mimic-cxr-reports (files/pXX/...txt); "
                                                     "default: root.")
    csv_file: str | None = Field(None, description="csv: CSV file name inside root (or an absolute path).")
    image_column: str = Field("image_path", description="csv: column holding the image path relative to root.")
    report_column: str = Field("report", description="csv: column holding the free-text report.")
    patient_column: str | None = Field(None, description="csv: column with patient ids (split by row when absent).")
    official_split: bool = Field(False, description="mimic_cxr_jpg: use the official MIMIC-CXR split instead of a "
                                                  "seeded patient split.")
    frontal_only: bool = Field(True, description="mimic_cxr_jpg / iu_xray: keep frontal (PA/AP) views only.")
    max_studies: int | None = Field(None, ge=1,
                                    description="Keep at most this many studies (seeded sample) - for quick trials.")
    download: bool = Field(True, description="iu_xray: download the public archives into data/ when absent.")
    split: SplitRatios = Field(default_factory=SplitRatios, description="Patient-level split ratios.")


class TinyClipParams(_Section):
    image_size: int = Field(64, ge=16, description="Input image side of the tiny CLIP.")
    patch_size: int = Field(8, ge=2, description="ViT patch size.")
    hidden_size: int = Field(128, ge=16, description="Width of both towers.")
    vision_layers: int = Field(4, ge=1, description="Vision transformer blocks.")
    text_layers: int = Field(2, ge=1, description="Text transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads in both towers.")
    projection_dim: int = Field(128, ge=8, description="Joint embedding size.")
    vocab_size: int = Field(2000, ge=100, description="Size of the tokenizer trained on the training reports.")
    max_length: int = Field(64, ge=8, description="Longest tokenised report; longer ones are truncated.")
    logit_scale_init: float = Field(50.0, gt=0, le=100,
                                    description="Starting softmax temperature scale (exp of CLIP's logit_scale).")


class ClipParams(_Section):
    model: str = Field(
        "tiny",
        description="'tiny' (built offline from config) or a Hugging Face hub id / local folder, "
        "e.g. openai/clip-vit-base-patch32; random:<hub id> builds that model's published architecture with random "
        "weights (rehearsal).",
    )
    max_length: int = Field(77, ge=8, le=512, description="Token limit for reports (CLIP's text tower holds 77).")
    tiny: TinyClipParams = Field(default_factory=TinyClipParams, description="Sizes of the offline tiny CLIP.")


class AugmentParams(_Section):
    enabled: bool = Field(True, description="Augment training images (never validation/test).")
    rotation_deg: float = Field(5.0, ge=0, le=30, description="Largest random rotation in degrees.")
    scale_min: float = Field(0.9, gt=0.3, le=1.0, description="Smallest random-resized-crop area fraction.")
    brightness: float = Field(0.1, ge=0, le=0.5, description="Largest relative brightness change.")
    contrast: float = Field(0.1, ge=0, le=0.5, description="Largest relative contrast change.")


class LabelAwareParams(_Section):
    same_labels: bool = Field(True, description="Also treat pairs with identical CheXpert label sets as positives "
                                              "(without it, exact duplicate reports train exactly as with InfoNCE, "
                                              "so the label-aware loss refuses that combination).")
    label_weight: float = Field(0.5, ge=0, le=1,
                                description="Target weight of a same-label pair relative to a same-report pair.")


class TrainParams(_Section):
    epochs: int = Field(3, ge=1, description="Passes over the training split.")
    batch_size: int = Field(16, ge=2, description="Image-report pairs per optimiser step (before accumulation).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimiser step.")
    lr: float = Field(5e-6, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps with linear warm-up.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine",
                                                              description="Learning-rate decay after warm-up.")
    freeze_vision_layers: int = Field(0, ge=0, description="Freeze the vision embeddings and the first N vision blocks "
                                                         "(0: train all).")
    loss: Literal["infonce", "label_aware"] = Field(
        "infonce", description="Contrastive loss: plain InfoNCE or label-aware soft targets."
    )
    label_aware: LabelAwareParams = Field(default_factory=LabelAwareParams,
                                          description="Options of the label-aware loss.")
    select_by: Literal["val_i2t_acc", "val_loss", "val_mean_r10"] = Field(
        "val_i2t_acc", description="Which epoch's weights are kept: best validation image->text top-1 accuracy "
                                   "(the reference recipe), lowest validation loss, or best mean Recall@10 of both "
                                   "directions.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="Autocast on GPU (auto: bf16 where supported); CPU runs in fp32."
    )
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers (None: one per spare core).")
    image_cache_mb: float = Field(1024.0, ge=0, description="Decoded training/validation images kept in memory across "
                                                          "epochs, in MB per loader process (0: decode every time).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps (quick trials).")
    max_minutes: float | None = Field(None, gt=0,
                                      description="Stop training after this wall time; the schedule is planned for it.")
    checkpoint_every_steps: int = Field(200, ge=1, description="Save resumable state every N optimiser steps.")
    resume: bool = Field(True, description="Continue from the run's last checkpoint when one exists.")
    val_max_pairs: int | None = Field(None, ge=2,
                                      description="Validate on at most this many pairs (None: whole split).")
    compare_losses_minutes: float | None = Field(
        None, gt=0, description="Notebook 01: also train InfoNCE and the label-aware loss from the base for this many "
        "minutes each (same steps) and compare them on val (None: skip).")
    augment: AugmentParams = Field(default_factory=AugmentParams, description="Training-time image augmentation.")

    @model_validator(mode="after")
    def _loss_changes_training(self) -> "TrainParams":
        # Report-group targets equal InfoNCE's loss and gradients when duplicate reports share one embedding
        # (tested), so a label-aware run without same-label positives would silently repeat an InfoNCE run.
        la = self.label_aware
        if self.loss == "label_aware" and (not la.same_labels or la.label_weight == 0):
            raise ValueError("label_aware without same-label positives (label_aware.same_labels true and "
                             "label_weight > 0) trains exactly like infonce - set them, or use loss: infonce")
        return self


class EmbedParams(_Section):
    batch_size: int = Field(64, ge=1, description="Images or reports per forward pass.")
    num_workers: int | None = Field(None, ge=0,
                                    description="DataLoader workers for decoding (None: one per spare core).")
    eval_split: Literal["train", "val", "test"] = Field("test", description="Split evaluated in notebook 03.")
    corpus_splits: list[Literal["train", "val", "test"]] = Field(
        ["train", "val", "test"], description="Splits that form the search corpus used by the dashboard and CLI."
    )


class IndexParams(_Section):
    type: Literal["flat", "hnsw", "ivf"] = Field("flat", description="FAISS index: exact inner product, HNSW or IVF.")
    # HNSW / IVF defaults from benchmarks/bench_search.py (README "Performance"): recall@10 >= 0.95 of exact
    # at >= 10x its speed on 2 cores, at 100k (HNSW) and 1M (IVF) vectors.
    hnsw_m: int = Field(32, ge=4, description="HNSW: neighbours per node.")
    hnsw_ef_construction: int = Field(200, ge=8, description="HNSW: build-time candidate list.")
    hnsw_ef_search: int = Field(16, ge=8, description="HNSW: query-time candidate list.")
    ivf_nlist: int = Field(1024, ge=1, description="IVF: number of coarse clusters.")
    ivf_nprobe: int = Field(6, ge=1, description="IVF: clusters visited per query.")


class ClassificationParams(_Section):
    positive: str = Field("{finding}", description="Positive prompt template of zero-shot classification "
                                                 "({finding}: the observation's phrase).")
    negative: str = Field("no {finding}", description="Negative prompt template of zero-shot classification (without "
                                                     "{finding}: one fixed negative prompt for every observation).")
    phrases: dict[str, str | list[str]] = Field(
        {}, description="Observation -> phrase put into the templates, or a list of candidate phrases (each model "
                        "uses the one with the best validation AUROC); unlisted observations use their name in "
                        "lower case.")
    pairs: dict[str, tuple[str, str]] = Field(
        {"No Finding": ("no acute cardiopulmonary process", "acute cardiopulmonary process")},
        description="Observation -> explicit [positive, negative] prompts (instead of the templates).")
    locations: list[str] = Field(
        [], description="Where a phrase has a {location} slot (e.g. '{location} pneumonia'), the prompt is CLIP's "
                        "prompt ensemble over these locations: the mean of their normalised text embeddings.")
    min_positives: int = Field(10, ge=1, description="Observations with fewer test positives stay out of the mean.")
    probe_c: list[float] = Field([0.01, 0.1, 1.0, 10.0], min_length=1,
                                 description="Linear probe: values of C tried on the validation split.")

    @field_validator("positive")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{finding}" not in value:
            raise ValueError("the positive prompt template needs the {finding} slot, e.g. '{finding}'")
        return value


class EvalParams(_Section):
    ks: list[int] = Field([1, 5, 10], description="K values of Recall@K in the table.")
    curve_max_k: int = Field(50, ge=1, description="Largest K of the recall@K curves.")
    precision_k: int = Field(10, ge=1, description="K of label-based Precision@K.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for 95% confidence intervals (0: none).")
    gallery_queries: int = Field(4, ge=0, description="Test queries shown with their top-5 hits in the gallery figure.")
    chexbert: bool = Field(False, description="Also score captions and reports with CheXbert F1 (f1chexbert; needs the "
                                              "package and its weights from the hub: the real profiles).")
    classification: ClassificationParams = Field(default_factory=ClassificationParams,
                                                 description="Zero-shot classification prompts and the linear probe.")


class TinyBlipParams(_Section):
    image_size: int = Field(64, ge=16, description="Input image side of the tiny BLIP.")
    patch_size: int = Field(16, ge=2, description="ViT patch size (16: at 64 px a tiny BLIP with patch 8 learned to "
                                                 "ignore the image).")
    hidden_size: int = Field(128, ge=16, description="Width of both towers.")
    vision_layers: int = Field(3, ge=1, description="Vision transformer blocks.")
    text_layers: int = Field(2, ge=1, description="Text decoder blocks.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    vocab_size: int = Field(2000, ge=100, description="Size of the tokenizer trained on the training reports.")


class CaptionParams(_Section):
    model: str = Field("tiny", description="'tiny' (offline) or a hub id / local folder, "
                                          "e.g. Salesforce/blip-image-captioning-base.")
    finetune: bool = Field(True, description="Fine-tune BLIP on image -> impression pairs before captioning.")
    epochs: int = Field(3, ge=1, description="BLIP fine-tuning epochs.")
    batch_size: int = Field(32, ge=1, description="BLIP fine-tuning and captioning batch size.")
    lr: float = Field(5e-4, gt=0, description="BLIP fine-tuning learning rate.")
    max_minutes: float | None = Field(None, gt=0, description="Stop BLIP fine-tuning after this wall time.")
    num_beams: int = Field(1, ge=1, description="Beam width (1: greedy).")
    max_new_tokens: int = Field(40, ge=1, description="Longest generated caption in tokens.")
    prompt: str | None = Field(None, description="Optional text prefix for conditional captioning.")
    max_images: int | None = Field(None, ge=1, description="Caption at most this many test images (None: all).")
    tiny: TinyBlipParams = Field(default_factory=TinyBlipParams, description="Sizes of the offline tiny BLIP.")


class ReportParams(_Section):
    n_cases: int = Field(20, ge=1, description="Test cases that get a diagnosis report in notebook 05.")
    top_k: int = Field(5, ge=1, le=50, description="Retrieved cases given to the reporter as evidence.")
    generator: Literal["auto", "offline", "gemini"] = Field(
        "auto", description="auto: Gemini when an API key is set, else the offline retrieval reporter."
    )
    min_confidence: float = Field(0.3, ge=0, le=1,
                                  description="Offline reporter: weighted vote needed to report a finding.")


class LLMParams(_Section):
    model: str = Field("gemini-2.5-flash", description="Gemini model name.")
    base_url: str | None = Field(None,
                                 description="Endpoint override (proxy or a local test server); None: the SDK default.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(4, ge=0,
                             description="Retries on 429/5xx/timeouts/invalid responses, with exponential backoff.")
    backoff_s: float = Field(1.0, ge=0, description="First backoff delay in seconds (doubles each retry).")
    temperature: float = Field(0.1, ge=0, le=2, description="Sampling temperature.")
    send_image: bool = Field(False, description="Privacy switch: also send the query image to Gemini (off: text only).")
    cache: bool = Field(True, description="Cache responses on disk keyed by (model, prompt, schema).")


class DashboardParams(_Section):
    default_k: int = Field(5, ge=1, le=50, description="Hits shown by default.")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest accepted upload in megabytes.")
    save_uploads: bool = Field(False, description="Write uploads to the run folder (off: kept in memory only).")
    # Serving (./run_all.sh --dashboard reads these from the run it serves; they change no result, so no stage
    # reruns for them). Each kernel holds the run's models: README "Dashboard" gives its memory.
    pool: int = Field(2, ge=0, le=64, description="Kernels kept preheated (notebook run, models loaded) so that a "
                                                  "new visitor's first query is warm; 0: start one per visitor.")
    max_sessions: int = Field(8, ge=1, le=256, description="Visitors served at once; beyond it a visitor gets a "
                                                           "'busy, try again shortly' page.")
    idle_timeout_s: float = Field(60.0, gt=0, description="A kernel whose page has closed is shut down after this "
                                                          "many seconds without activity.")
    open_idle_timeout_s: float = Field(1800.0, gt=0, description="A kernel whose page is open but unused is shut "
                                                                 "down after this many seconds (reload for a new "
                                                                 "one).")
    refill_delay_s: float = Field(30.0, ge=0, description="Seconds before the pool starts a kernel in place of one "
                                                          "a visitor took: the refill then does not compete for the "
                                                          "CPU with the visitors who just arrived, but a visitor who "
                                                          "finds the pool empty waits for it (this delay plus "
                                                          "preheating).")


class QueryCheckParams(_Section):
    """The out-of-distribution check in front of search and diagnosis (retrieval.ood, README 'Know when not to
    answer'). Method and k were chosen by benchmarks/bench_ood.py."""

    # Mahalanobis won on the demo run (benchmarks/results/bench_ood.json): AUROC 0.993 vs 0.966-0.970 for deep-kNN.
    method: Literal["knn", "mahalanobis"] = Field(
        "mahalanobis", description="mahalanobis: distance to a Gaussian fitted to the training images' embeddings; "
                                   "knn: cosine distance to the k-th nearest training image (deep-kNN, Sun et al. "
                                   "2022).")
    k: int = Field(10, ge=1, description="knn: which nearest neighbour's distance is the score.")
    accept: float = Field(0.95, gt=0, lt=1, description="Share of validation images the calibrated threshold accepts.")
    colour_limit: float = Field(0.06, gt=0, le=1,
                                description="Mean chroma (0..1) above which an image is a colour picture, not a "
                                            "radiograph.")
class AsrParams(_Section):
    backend: Literal["pocketsphinx", "hybrid", "whisper"] = Field(
        "hybrid", description="Speech recogniser for spoken queries: hybrid (offline: Moonshine base hears everyday "
                              "words, PocketSphinx with the run's language model chooses between them and the run's "
                              "medical words), pocketsphinx (offline, the run's language model only) or whisper "
                              "(asr.model through transformers).")
    model: str = Field("openai/whisper-small.en",
                       description="Whisper hub id or save_pretrained folder (backend whisper); random:<hub id> "
                                   "builds that model's published architecture with random weights (rehearsal).")
    max_new_tokens: int = Field(96, ge=1, le=440, description="whisper: longest transcript in tokens (30 s of "
                                                              "speech is about 90 words).")
    num_beams: int = Field(1, ge=1, le=10, description="whisper: beam width (1: greedy, what a query box can wait "
                                                       "for on a CPU; transformers' pipeline would otherwise use 5).")
    min_confidence: float = Field(0.5, ge=0, le=1, description="Words heard with a lower confidence (0..1) are "
                                  "marked in the transcript; a side or level word (left, right, bilateral, upper, "
                                  "middle, lower) below it, or heard differently by the second hypothesis, is asked "
                                  "about before searching.")
    max_seconds: float = Field(30.0, gt=0, description="Longest accepted spoken query in seconds.")
    max_mb: float = Field(10.0, gt=0, description="Largest accepted audio file in megabytes.")


class Params(_Section):
    """Everything a run needs, as one validated tree (the YAML's top-level keys)."""

    profile: str = Field(..., description="Profile name; also the default run name.")
    description: str = Field("", description="One line on what this profile is for.")
    seed: int = Field(0, description="Seed for data generation, splits, training and bootstrap.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Torch device (auto: CUDA when present).")
    stages: list[str] | None = Field(None, description="Notebook numbers to run (None: all), e.g. ['00', '01'].")
    parallel_notebooks: int = Field(1, ge=1, description="Notebooks the chain may run at once (each starts when "
                                    "the ones it reads from have finished); results are the same either way.")
    data: DataParams = Field(default_factory=DataParams, description="Dataset source and split.")
    clip: ClipParams = Field(default_factory=ClipParams, description="CLIP model.")
    train: TrainParams = Field(default_factory=TrainParams, description="CLIP fine-tuning.")
    embed: EmbedParams = Field(default_factory=EmbedParams, description="Embedding.")
    index: IndexParams = Field(default_factory=IndexParams, description="FAISS index.")
    eval: EvalParams = Field(default_factory=EvalParams, description="Retrieval evaluation.")
    captions: CaptionParams = Field(default_factory=CaptionParams, description="BLIP captioning.")
    report: ReportParams = Field(default_factory=ReportParams, description="Diagnosis reports.")
    llm: LLMParams = Field(default_factory=LLMParams,
                           description="Gemini client settings (the key comes from the environment).")
    dashboard: DashboardParams = Field(default_factory=DashboardParams, description="Voila dashboard.")
    query_check: QueryCheckParams = Field(default_factory=QueryCheckParams,
                                          description="Out-of-distribution check of queries.")
    asr: AsrParams = Field(default_factory=AsrParams, description="Speech recognition of spoken queries.")


class Config:
    """Validated params plus the run they belong to."""

    def __init__(self, params: Params, run_dir: Path, params_path: Path | None, overrides: dict[str, Any]):
        self.params = params
        self.run_dir = run_dir
        self.paths = RunPaths(run_dir)
        self.params_path = params_path
        self.overrides = dict(overrides)

    def __getattr__(self, name: str) -> Any:  # cfg.train.lr reads like the YAML
        if name in Params.model_fields:
            return getattr(self.params, name)
        raise AttributeError(name)

    @property
    def run_name(self) -> str:
        return self.run_dir.name

    def to_dict(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")

    def random_weights(self) -> dict[str, str]:
        """The run's models built with random weights (``random:<hub id>`` specs; ASR only with the whisper
        backend): param -> spec. Empty for a run whose models are pretrained or the offline tiny ones."""
        p = self.params
        specs = {"clip.model": p.clip.model, "captions.model": p.captions.model,
                 "asr.model": p.asr.model if p.asr.backend == "whisper" else ""}
        return {k: v for k, v in specs.items() if v.strip().startswith(RANDOM_PREFIX)}

    def params_hash(self) -> str:
        """Stable hash of the resolved params (sweeps skip runs whose hash already finished)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Config(profile={self.params.profile!r}, run_dir={str(self.run_dir)!r})"


def resolve_params_path(path: str | os.PathLike) -> Path:
    """A params path as given, else relative to the project root, else a profile name."""
    candidate = Path(path).expanduser()
    for option in (candidate, PROJECT_ROOT / candidate, PROJECT_ROOT / "params" / f"{path}.yaml"):
        if option.is_file():
            return option.resolve()
    raise ConfigError(f"params file not found: {path} - pass a YAML under params/ (e.g. params/demo.yaml) "
                      "or a profile name")


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"train.lr"``) in a nested dict, creating sections as needed."""
    out = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        if not isinstance(dotted, str) or not dotted:
            raise ConfigError(f"override key {dotted!r} must be a dotted string such as 'train.lr'")
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = f"{source}: unknown key '{key}' - check the spelling against params/demo.yaml"
        elif err["type"] == "missing":
            msg = f"{source}: missing required key '{key}'"
        elif err["type"] == "value_error":  # a rule across keys: its message names them, the input would be noise
            msg = f"{source}: bad value for '{key}': {err['msg'].removeprefix('Value error, ')}"
        else:
            msg = f"{source}: bad value for '{key}': {err['msg']} (got {err.get('input')!r})"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (+{more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(msg) from None


def load(params: str | os.PathLike = "params/demo.yaml", run: str | os.PathLike | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate a params YAML, apply dotted ``overrides``, and locate the run folder.

    ``run`` is a run name under ``outputs/`` or a path; by default the profile's name.
    """
    path = resolve_params_path(params)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({exc.__class__.__name__}) - fix the file's syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: expected a mapping of sections at the top level")
    raw = apply_overrides(raw, overrides or {})
    parsed = parse_params(raw, source=path.name)
    run_dir = resolve_run_dir(run if run else parsed.profile)
    return Config(parsed, run_dir, path, dict(overrides or {}))


def from_run(run: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Config:
    """Rebuild the Config a finished run used, from its ``run.json`` (with dotted ``overrides`` applied on top)."""
    run_dir = resolve_run_dir(run)
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise ConfigError(f"no run at {run_dir} (missing run.json) - run ./run_all.sh first "
                          "or pass --run with an existing run")
    info = json.loads(run_json.read_text(encoding="utf-8"))
    parsed = parse_params(apply_overrides(info["params"], overrides or {}), source=str(run_json))
    recorded = {**info.get("overrides", {}), **dict(overrides or {})}
    return Config(parsed, run_dir, Path(info.get("params_path") or "") or None, recorded)
