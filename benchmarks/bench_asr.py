"""Spoken queries on a finished run: word error rate per recogniser backend, and whether a spoken query finds the
same cases as the typed one.

    python benchmarks/bench_asr.py                       # the demo run (outputs/demo), PocketSphinx, 2 cores
    python benchmarks/bench_asr.py --run R --backends pocketsphinx whisper --whisper-model openai/whisper-small.en

Audio: each of the QUERIES below spoken by espeak-ng (Debian package) in each of VOICES (voice, words per minute),
with 0.3 s of silence first, as a microphone picks up before the speaker starts; cached under
``data/bench_asr/``. Recognition: the run's recogniser (``speech.Transcriber``) with ``asr.backend`` set per
backend; WER is corpus WER (word edits over reference words) after the recogniser's normalisation, overall and
per voice. A recording in which nothing is recognised counts as all words deleted. Speed: transcription seconds
(decoding the file included; building the language model, once per run, reported apart) per 5 s of audio, the
process pinned to ``--cores`` cores. Agreement: top-5 hits (``Assistant.search``, fine-tuned CLIP) of the spoken
query's transcript against the typed query's, as the share of the typed top-5 study ids also in the spoken top-5,
averaged over recordings; and the share of recordings whose top-5 is exactly the typed one.

A backend that cannot run (Whisper offline without its weights) is recorded with its one-line reason.
Writes benchmarks/results/bench_asr.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from medxpert_utils.assistant import Assistant
from medxpert_utils.core import config, io
from medxpert_utils.core.errors import AudioError, UserError
from medxpert_utils.data import manifest
from medxpert_utils.speech import Transcriber, language
from medxpert_utils.speech.scoring import word_error_rate
from medxpert_utils.speech.synth import synthesise

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

QUERIES = (
    "left pleural effusion", "signs of pneumonia", "moderate right pneumothorax", "cardiomegaly",
    "is there atelectasis", "pulmonary edema", "consolidation in the right lower lobe", "large left pleural effusion",
    "small right pneumothorax", "enlarged heart", "bilateral pleural effusions", "rib fracture",
    "left upper lobe mass", "no acute cardiopulmonary process", "signs of pulmonary edema", "right pleural effusion",
    "is there a pneumothorax", "left lower lobe atelectasis", "pneumonia in the right middle lobe",
    "evidence of cardiomegaly", "any pleural effusion", "lung nodule", "support devices",
    "endotracheal tube", "left pneumothorax", "mild cardiomegaly", "the lungs are clear", "right upper lobe pneumonia",
    "small bilateral pleural effusions", "displaced rib fracture", "moderate pulmonary edema",
    "consolidation in the left lower lobe", "is there pneumonia", "enlarged cardiomediastinum", "lung opacity",
    "right lower lobe atelectasis", "large right pneumothorax", "normal chest", "heart size is normal",
    "no pleural effusion or pneumothorax", "signs of consolidation", "small left pleural effusion",
    "right middle lobe opacity", "severe cardiomegaly", "pacemaker", "left lung mass", "fracture of the left rib",
    "no focal consolidation",
)
# espeak-ng's default US voice, two of its variants, and its Klatt-synthesiser voices, at several speeds.
VOICES = (("en-us", 150), ("en-us+m3", 140), ("en-us+f3", 170), ("en-us+klatt", 150), ("en-us+klatt2", 170),
          ("en-us+klatt3", 140), ("en-us+klatt4", 130), ("en-us+klatt4", 190))


def synthesise_all(folder: Path) -> list[tuple[str, str, Path]]:
    """(query, voice label, wav) for every query and voice, synthesised once into ``folder``."""
    out = []
    for i, query in enumerate(QUERIES):
        for voice, speed in VOICES:
            path = folder / f"{i:02d}_{voice}_{speed}.wav"
            if not path.is_file():
                synthesise(query, path, voice=voice, speed=speed, lead_seconds=0.3)
            out.append((query, f"{voice} {speed} wpm", path))
    return out


def top_ids(assistant: Assistant, text: str, k: int = 5) -> list[str]:
    return [hit.study_id for hit in assistant.search(text=text, k=k)] if text.strip() else []


def lm_sentences(cfg: config.Config) -> set[str]:
    """The sentences PocketSphinx's language model is built from (as in speech.transcribe), to tell which
    benchmark queries it has seen word for word."""
    frame = manifest.read(cfg.run_dir)
    train = frame[frame["split"] == "train"]
    reports = [str(t) for col in ("findings", "impression") for t in train[col].dropna() if str(t).strip()]
    return set(language.corpus(reports, query_weight=1))


def _wer(rows: list[dict]) -> float | None:
    return round(word_error_rate([r["query"] for r in rows], [r["heard"] for r in rows]), 4) if rows else None


def bench_backend(cfg: config.Config, recordings: list, assistant: Assistant) -> dict:
    transcriber = Transcriber(cfg)
    t0 = time.perf_counter()
    try:
        transcriber.load()
    except UserError as exc:
        return {"status": "unavailable", "reason": str(exc)}
    load_s = time.perf_counter() - t0
    typed = {query: top_ids(assistant, query) for query in QUERIES}
    rows = []
    for query, voice, path in recordings:
        try:
            heard = transcriber.transcribe(path)
            text, seconds, elapsed = heard.text, heard.seconds, heard.elapsed_s
        except AudioError:  # nothing recognised: every word deleted
            audio = transcriber.read(path)
            text, seconds, elapsed = "", audio.seconds, float("nan")
        spoken = top_ids(assistant, text)
        overlap = len(set(spoken) & set(typed[query])) / max(len(typed[query]), 1)
        rows.append({"query": query, "voice": voice, "heard": text, "audio_s": seconds, "elapsed_s": elapsed,
                     "top5_overlap": overlap, "same_top5": spoken == typed[query]})
    timed = [r for r in rows if np.isfinite(r["elapsed_s"])]
    seen = lm_sentences(cfg)
    in_lm = [r for r in rows if language.normalise(r["query"]) in seen]
    not_in_lm = [r for r in rows if language.normalise(r["query"]) not in seen]
    per_voice = {}
    for voice in dict.fromkeys(r["voice"] for r in rows):
        mine = [r for r in rows if r["voice"] == voice]
        per_voice[voice] = {"wer": round(word_error_rate([r["query"] for r in mine], [r["heard"] for r in mine]), 4),
                            "top5_overlap": round(float(np.mean([r["top5_overlap"] for r in mine])), 4)}
    return {
        "status": "ok",
        "model": transcriber.model_name,
        "recordings": len(rows),
        "wer": round(word_error_rate([r["query"] for r in rows], [r["heard"] for r in rows]), 4),
        # PocketSphinx's language model holds most benchmark queries as sentences (query forms, report sentences):
        "wer_queries_in_lm_corpus": _wer(in_lm),
        "wer_queries_not_in_lm_corpus": _wer(not_in_lm),
        "queries_not_in_lm_corpus": sorted({r["query"] for r in not_in_lm}),
        "exact_transcripts": round(float(np.mean([r["heard"] == r["query"] for r in rows])), 4),
        "top5_overlap": round(float(np.mean([r["top5_overlap"] for r in rows])), 4),
        "same_top5": round(float(np.mean([r["same_top5"] for r in rows])), 4),
        "seconds_per_5s_audio": round(5 * sum(r["elapsed_s"] for r in timed) / sum(r["audio_s"] for r in timed), 4),
        "mean_audio_s": round(float(np.mean([r["audio_s"] for r in rows])), 3),
        "load_s": round(load_s, 2),
        "per_voice": per_voice,
        "errors": [{k: r[k] for k in ("query", "voice", "heard")} for r in rows if r["heard"] != r["query"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="demo", help="a finished run (name under outputs/ or a folder)")
    parser.add_argument("--backends", nargs="+", default=["pocketsphinx"], choices=["pocketsphinx", "whisper"])
    parser.add_argument("--whisper-model", default=None, help="asr.model for the whisper backend (default: params)")
    parser.add_argument("--cores", type=int, default=2, help="pin the process to this many cores (0: all)")
    parser.add_argument("--audio-cache", type=Path, default=ROOT / "data" / "bench_asr")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_asr.json")
    args = parser.parse_args(argv)
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    recordings = synthesise_all(args.audio_cache)
    assistant = Assistant(args.run)
    result = {"run": str(assistant.run_dir), "queries": len(QUERIES), "voices": [f"{v} {s} wpm" for v, s in VOICES],
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
              "backends": {}}
    for backend in args.backends:
        cfg = config.from_run(assistant.run_dir)
        cfg.params.asr.backend = backend
        if backend == "whisper" and args.whisper_model:
            cfg.params.asr.model = args.whisper_model
        figures = bench_backend(cfg, recordings, assistant)
        result["backends"][backend] = figures
        if figures["status"] == "ok":
            print(f"{backend}: WER {figures['wer']:.1%} over {figures['recordings']} recordings, top-5 overlap "
                  f"{figures['top5_overlap']:.3f} (same top-5 {figures['same_top5']:.1%}), "
                  f"{figures['seconds_per_5s_audio']:.3f} s per 5 s of audio; WER on queries in / not in the LM's "
                  f"corpus {figures['wer_queries_in_lm_corpus']:.1%} / {figures['wer_queries_not_in_lm_corpus']:.1%}")
            for voice, row in figures["per_voice"].items():
                print(f"  {voice:24s} WER {row['wer']:.1%}  overlap {row['top5_overlap']:.3f}")
        else:
            print(f"{backend}: unavailable - {figures['reason']}")
    io.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
