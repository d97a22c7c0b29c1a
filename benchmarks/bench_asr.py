"""Spoken queries on a finished run: word error rate per recogniser backend on queries in and out of the run's
language, side and level words, speed, and whether a spoken query finds the same cases as the typed one.

    python benchmarks/bench_asr.py                       # the demo run, backends hybrid and pocketsphinx, 2 cores
    python benchmarks/bench_asr.py --set dev             # the development queries (tuning happens on these only)
    python benchmarks/bench_asr.py --run R --backends hybrid whisper --whisper-model openai/whisper-small.en

Queries: IN_CORPUS (ways of asking the run's language model was built from: query forms and report sentences) and
OUT_OF_CORPUS (a person's own words: "water on the right lung", "a tube in the windpipe"); which set a query is in
is checked against the run's language model corpus, and a query found in the other set is reported. DEV_QUERIES
are a third set for tuning the recogniser's constants, never scored with the others.

Audio: each query spoken by each of VOICES, from three synthesisers (Debian packages espeak-ng, flite, festival with
festvox-us-slt-hts), each recording in one of CONDITIONS by turns: normal speed, 15% faster, 13% slower (sox's
pitch-keeping tempo), or with white noise at 20 dB SNR; 0.3 s of silence first, as a microphone picks up before the
speaker starts. Cached under ``data/bench_asr/``.

Recognition: the run's recogniser (``speech.Transcriber``) with ``asr.backend`` set per backend. WER is corpus WER
(word edits over reference words, jiwer) after the recogniser's normalisation, per set, per synthesiser and per
voice; a recording in which nothing is recognised counts as all words deleted. Side and level words (left, right,
bilateral; upper, middle, lower): on the recordings whose query has one, a *swap* is a transcript whose side and
level words differ from the query's (a missing one included) while the transcript does not ask about them
(``transcript.ask``); the share asked about is reported too. Speed: transcription seconds (decoding the file
included; loading the recogniser, once per run, reported apart) per 5 s of audio, the process pinned to ``--cores``
cores. Agreement: the share of the typed query's top-5 study ids (``Assistant.search``) also in the spoken query's
top-5, averaged over recordings; and the share of recordings whose top-5 is exactly the typed one.

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
from medxpert_utils.speech.synth import Voice, speak
from medxpert_utils.speech.transcript import group_of

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

IN_CORPUS = (
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
# A person's own words: phrasings (and many words) the run's reports and query forms never use.
OUT_OF_CORPUS = (
    "is there fluid in the left chest", "water on the right lung", "the heart looks too big",
    "mass in the lower part of the right lung", "any air outside the left lung", "cloudy area in the right upper lobe",
    "shadow in the middle of the right lung", "does the left lower lobe look collapsed", "broken ribs on the left",
    "lung infection on both sides", "swelling of the lungs from heart failure", "a tube in the windpipe",
    "white patch at the bottom of the left lung", "is the right lung fully expanded", "scarring in the upper lobes",
    "a lump in the left upper lobe", "fluid at the bottom of both lungs", "is there a collapsed lung on the right",
    "pneumonia at the base of the left lung", "enlarged heart with fluid in the lungs", "spot on the right middle lobe",
    "has the pacemaker moved", "thickening around the left lung", "trapped air on the right side",
)
# For tuning the recogniser's constants (speech.hybrid, speech.sphinx); never scored with the sets above. (The
# constants were tuned on an earlier version of this list whose 8 in-corpus queries were also IN_CORPUS queries;
# those were replaced by the 8 in-corpus queries here, which no other list has.)
DEV_QUERIES = (
    "is there a left pleural effusion", "mass in the upper part of the left lung",
    "shadow at the base of the right lung", "left upper lobe pneumonia", "small right pleural effusion",
    "large left pneumothorax", "severe pulmonary edema", "consolidation in the left upper lobe",
    "mild pulmonary edema", "no acute findings", "bibasilar atelectasis", "nasogastric tube",
    "fluid around the left lung", "collapsed right lung", "is the heart bigger than normal",
    "any sign of infection in both lungs", "broken rib on the right side", "small spot in the left upper lobe",
)
VOICES = (Voice("espeak-ng", "en-us"), Voice("espeak-ng", "en-us+klatt4"), Voice("flite", "slt"), Voice("flite", "rms"),
          Voice("flite", "awb"), Voice("flite", "kal16"), Voice("festival", "cmu_us_slt_arctic_hts"))
# (label, tempo, SNR in dB or None): each recording takes the next in turn
CONDITIONS = (("normal", 1.0, None), ("fast", 1.15, None), ("slow", 0.87, None), ("noise 20 dB", 1.0, 20.0))


def synthesise_all(folder: Path, queries: tuple[str, ...]) -> list[dict]:
    """One recording per query and voice, synthesised once into ``folder``."""
    out = []
    for i, query in enumerate(queries):
        for j, voice in enumerate(VOICES):
            label, tempo, snr = CONDITIONS[(i + j) % len(CONDITIONS)]
            slug = "_".join(query.split())[:60]
            path = folder / voice.engine / voice.name / f"{slug}_{label.replace(' ', '')}.wav"
            if not path.is_file():
                speak(query, path, voice, tempo=tempo, snr_db=snr, lead_seconds=0.3, seed=i * 31 + j)
            out.append({"query": query, "voice": voice.label, "engine": voice.engine, "condition": label,
                        "path": path})
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


def sides(text: str) -> list[str]:
    """The side and level words of ``text``, in order."""
    return [w for w in language.words(text) if group_of(w)]


def side_figures(rows: list[dict]) -> dict:
    """On recordings whose query has a side or level word: swaps (the transcript's side and level words differ
    from the query's and the transcript does not ask about them) and the share asked about."""
    mine = [r for r in rows if sides(r["query"])]
    swaps = [r for r in mine if sides(r["heard"]) != sides(r["query"]) and not r["asked"]]
    wrong = [r for r in mine if sides(r["heard"]) != sides(r["query"])]
    right = [r for r in mine if r not in wrong]
    return {"recordings": len(mine), "swaps": len(swaps), "swap_rate": round(len(swaps) / max(len(mine), 1), 4),
            "wrong_side_words": len(wrong),
            "asked": round(float(np.mean([r["asked"] for r in mine])), 4) if mine else None,
            "asked_when_right": round(float(np.mean([r["asked"] for r in right])), 4) if right else None,
            "swapped": [{k: r[k] for k in ("query", "voice", "condition", "heard")} for r in swaps]}


def group_figures(rows: list[dict], key: str) -> dict:
    return {value: {"recordings": len(mine), "wer": _wer(mine),
                    "top5_overlap": round(float(np.mean([r["top5_overlap"] for r in mine])), 4)}
            for value in dict.fromkeys(r[key] for r in rows) for mine in [[r for r in rows if r[key] == value]]}


def set_figures(rows: list[dict]) -> dict:
    timed = [r for r in rows if np.isfinite(r["elapsed_s"])]
    return {
        "recordings": len(rows),
        "wer": _wer(rows),
        "exact_transcripts": round(float(np.mean([r["heard"] == r["query"] for r in rows])), 4),
        "top5_overlap": round(float(np.mean([r["top5_overlap"] for r in rows])), 4),
        "same_top5": round(float(np.mean([r["same_top5"] for r in rows])), 4),
        "seconds_per_5s_audio": round(5 * sum(r["elapsed_s"] for r in timed) / sum(r["audio_s"] for r in timed), 4),
        "side_and_level": side_figures(rows),
        "per_synthesiser": group_figures(rows, "engine"),
        "per_condition": group_figures(rows, "condition"),
        "per_voice": group_figures(rows, "voice"),
    }


def bench_backend(cfg: config.Config, recordings: dict[str, list[dict]], assistant: Assistant) -> dict:
    transcriber = Transcriber(cfg)
    t0 = time.perf_counter()
    try:
        transcriber.load()
    except UserError as exc:
        return {"status": "unavailable", "reason": str(exc)}
    load_s = time.perf_counter() - t0
    out: dict = {"status": "ok", "model": transcriber.model_name, "load_s": round(load_s, 2), "sets": {}}
    every = []
    for name, items in recordings.items():
        typed = {query: top_ids(assistant, query) for query in dict.fromkeys(r["query"] for r in items)}
        rows = []
        for item in items:
            try:
                heard = transcriber.transcribe(item["path"])
                text, seconds, elapsed, asked = heard.text, heard.seconds, heard.elapsed_s, heard.unsure
                words = [w.to_dict() for w in heard.words]
            except AudioError:  # nothing recognised: every word deleted
                audio = transcriber.read(item["path"])
                text, seconds, elapsed, asked, words = "", audio.seconds, float("nan"), False, []
            spoken = top_ids(assistant, text)
            query = item["query"]
            rows.append({**{k: item[k] for k in ("query", "voice", "engine", "condition")}, "heard": text,
                         "asked": asked, "words": words, "audio_s": seconds, "elapsed_s": elapsed,
                         "top5_overlap": len(set(spoken) & set(typed[query])) / max(len(typed[query]), 1),
                         "same_top5": spoken == typed[query]})
        out["sets"][name] = set_figures(rows)
        out["sets"][name]["errors"] = [{k: r[k] for k in ("query", "voice", "condition", "heard", "asked")}
                                       for r in rows if r["heard"] != r["query"]]
        every += rows
    timed = [r for r in every if np.isfinite(r["elapsed_s"])]
    out["seconds_per_5s_audio"] = round(5 * sum(r["elapsed_s"] for r in timed) / sum(r["audio_s"] for r in timed), 4)
    out["mean_audio_s"] = round(float(np.mean([r["audio_s"] for r in every])), 3)
    out["side_and_level"] = side_figures(every)
    out["top5_overlap"] = round(float(np.mean([r["top5_overlap"] for r in every])), 4)
    return out


def query_sets(cfg: config.Config, which: str) -> dict[str, tuple[str, ...]]:
    """The sets to score, each checked against the run's language model corpus."""
    if which == "dev":
        return {"dev": DEV_QUERIES}
    seen = lm_sentences(cfg)
    return {"in_corpus": tuple(q for q in IN_CORPUS if language.normalise(q) in seen),
            "out_of_corpus": tuple(q for q in OUT_OF_CORPUS if language.normalise(q) not in seen),
            "in_corpus_list_but_not_in_the_corpus": tuple(q for q in IN_CORPUS if language.normalise(q) not in seen)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="demo", help="a finished run (name under outputs/ or a folder)")
    parser.add_argument("--backends", nargs="+", default=["hybrid", "pocketsphinx"],
                        choices=["hybrid", "pocketsphinx", "whisper"])
    parser.add_argument("--set", default="benchmark", choices=["benchmark", "dev"],
                        help="benchmark: the in- and out-of-corpus queries; dev: the development queries")
    parser.add_argument("--whisper-model", default=None, help="asr.model for the whisper backend (default: params)")
    parser.add_argument("--cores", type=int, default=2, help="pin the process to this many cores (0: all)")
    parser.add_argument("--audio-cache", type=Path, default=ROOT / "data" / "bench_asr")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/bench_asr[_dev].json")
    args = parser.parse_args(argv)
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    assistant = Assistant(args.run)
    base_cfg = config.from_run(assistant.run_dir)
    sets = query_sets(base_cfg, args.set)
    recordings = {name: synthesise_all(args.audio_cache, queries) for name, queries in sets.items()
                  if queries and not name.startswith("in_corpus_list")}
    result = {"run": str(assistant.run_dir), "set": args.set, "queries": {k: list(v) for k, v in sets.items()},
              "voices": [v.label for v in VOICES], "conditions": [c[0] for c in CONDITIONS],
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
        if figures["status"] != "ok":
            print(f"{backend}: unavailable - {figures['reason']}")
            continue
        side = figures["side_and_level"]
        print(f"{backend}: {figures['seconds_per_5s_audio']:.3f} s per 5 s of audio, top-5 overlap "
              f"{figures['top5_overlap']:.3f}; side/level swaps {side['swaps']}/{side['recordings']} "
              f"(asked {side['asked']:.1%})")
        for name, row in figures["sets"].items():
            print(f"  {name:14s} WER {row['wer']:.1%} over {row['recordings']} recordings, top-5 overlap "
                  f"{row['top5_overlap']:.3f}")
            for engine, sub in row["per_synthesiser"].items():
                print(f"    {engine:10s} WER {sub['wer']:.1%}  overlap {sub['top5_overlap']:.3f}")
    out = args.out or RESULTS / ("bench_asr_dev.json" if args.set == "dev" else "bench_asr.json")
    io.write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
