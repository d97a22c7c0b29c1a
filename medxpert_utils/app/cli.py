"""``medxpert`` command line: the notebooks' work in batch.

Subcommands: ``run`` (the notebook chain, redoing only stale stages), ``status`` (which stages are stale and why),
``search``, ``diagnose``, ``explain``, ``eval``, ``export-csv``,
``sweep``. ``--run`` takes a run name under ``outputs/`` or a path to a run folder. User
mistakes print one line to stderr and exit 2; ``--debug`` shows the traceback instead. ``diagnose`` on a query
the check (retrieval.ood) finds unlike the run's radiographs prints one line and exits 3 unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from medxpert_utils.core.errors import QueryRejectedError, UserError
from medxpert_utils.core.stage import parse_overrides
from medxpert_utils.retrieval.explain import METHODS

if TYPE_CHECKING:  # each command imports what it uses: `medxpert status` loads no model code
    from medxpert_utils.assistant import Assistant
    from medxpert_utils.core.config import Config
    from medxpert_utils.speech.transcript import Transcript


def cmd_run(args: argparse.Namespace) -> int:
    from medxpert_utils.app.pipeline import ChainFailed, run_chain

    try:
        force: bool | list[str] = False if args.force is None else (args.force or True)
        run_chain(args.params, args.run, parse_overrides(args.set), start=args.start, only=args.only, until=args.until,
                  parallel=args.parallel, force=force)
    except ChainFailed:
        return 1  # the pipeline already printed which notebook failed and where to look
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Every stage fresh, stale or missing, with the reasons; runs nothing. Exit 0 when all are fresh, else 1."""
    from medxpert_utils.core import config, keys

    overrides = parse_overrides(args.set)
    if args.params is None:
        if args.run is None:
            raise UserError("medxpert status needs --run R (the run's own params are used) or a params file")
        cfg = config.from_run(args.run, overrides)
    else:
        cfg = config.load(args.params, args.run, overrides)
    status = keys.evaluate(cfg)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(keys.format_status(status))
    return 0 if status.fresh else 1


def _spoken(assistant: Assistant, args: argparse.Namespace) -> dict | None:
    """Transcribe ``--audio`` into ``args.text`` (the query); the transcript for the JSON output, or None.

    A side or level word the recogniser is unsure of stops the command (one line naming the queries it may have
    been) rather than searching with a guess; words heard with low confidence are marked ``?`` on the heard line.
    """
    if getattr(args, "audio", None) is None:
        return None
    transcript = assistant.transcribe(args.audio)
    if transcript.ask:
        raise UserError(_unsure(transcript))
    args.text = transcript.text
    if not args.json:
        cfg = cast("Config", assistant.cfg)  # an Assistant made from a run name holds the run's Config
        low = set(transcript.low_confidence(cfg.asr.min_confidence))
        heard = " ".join(w.text + ("?" if i in low else "") for i, w in enumerate(transcript.words)) or transcript.text
        print(f"heard ({transcript.backend}, {transcript.seconds:.1f} s of audio): {heard}", file=sys.stderr)
    return transcript.to_dict()


def _unsure(transcript: Transcript) -> str:
    """One line: what was heard, which side or level word is unsure, and the ``--text`` queries it may have been."""
    from medxpert_utils.speech.transcript import SIDES

    first, *more = transcript.ask
    kind = "side" if set(SIDES) & set(first.choices) else "level"
    names = [c or "none" for c in first.choices]
    choices = f"{', '.join(names[:-1])} or {names[-1]}?" if len(names) > 1 else f"{names[0]}?"
    if not first.heard:
        what = f"a {kind} word may be missing"
    elif first.reason == "low confidence":
        what = f"'{first.heard}' was heard with low confidence"
    else:
        what = f"'{first.heard}' may have been heard wrongly"
    others = ", ".join(f"'{q.heard}'" if q.heard else "a missing word" for q in more)
    also = f"; also unsure: {others}" if more else ""
    queries = ", ".join(f"'{q}'" for q in transcript.alternatives())
    return (f"heard '{transcript.text}' but {what} ({choices}){also} - rerun with --text and the query you meant: "
            f"{queries}")


def cmd_search(args: argparse.Namespace) -> int:
    from medxpert_utils.assistant import Assistant, QueryImage
    from medxpert_utils.retrieval.search import format_hits

    assistant = Assistant(args.run)
    transcript = _spoken(assistant, args)
    if args.text is not None:
        check = assistant.check_query(text=args.text, model=args.model)
        hits = assistant.search(text=args.text, k=args.k, model=args.model)
        query = args.text
    else:
        image = QueryImage.of(args.image)  # read and decoded once for the check and the search
        check = assistant.check_query(image=image, model=args.model)
        hits = assistant.search(image=image, k=args.k, model=args.model)
        query = str(args.image)
    if args.json:
        spoken = {"transcript": transcript} if transcript else {}
        out = {"query": query, **spoken, "query_check": check.to_dict(), "hits": [h.to_dict() for h in hits]}
        print(json.dumps(out, indent=2))
    else:
        if not check.in_distribution:
            print(f"warning: {check.message().split(' - ')[0]}; the hits below are not evidence", file=sys.stderr)
        print(format_hits(hits))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from medxpert_utils.assistant import Assistant, QueryImage
    from medxpert_utils.report import render_text

    assistant = Assistant(args.run)
    transcript = _spoken(assistant, args)
    image = QueryImage.of(args.image) if args.image is not None else None
    try:
        report = assistant.diagnose(image=image, text=args.text, question=args.question, k=args.k,
                                    generator=args.generator, model=args.model, force=args.force)
    except QueryRejectedError as exc:
        print(f"medxpert: not answered: {exc}", file=sys.stderr)
        return 3
    check = assistant.last_check
    if check is not None and not check.in_distribution:  # --force
        print(f"warning: forced: {check.message().split(' - ')[0]}", file=sys.stderr)
    if args.json:
        if transcript:
            print(json.dumps({**json.loads(report.model_dump_json()), "transcript": transcript}, indent=2))
        else:
            print(report.model_dump_json(indent=2))
    else:
        print(render_text(report))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from medxpert_utils.assistant import Assistant, QueryImage
    from medxpert_utils.core import io
    from medxpert_utils.retrieval.explain import normalise
    from medxpert_utils.viz.plots import heatmap_overlay

    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"--out {args.out} must end in .png or .jpg")
    image = QueryImage.of(args.image)
    heat = Assistant(args.run).explain(image, args.text, model=args.model, method=args.method)
    picture = Image.fromarray(heatmap_overlay(image.image, normalise(heat)))
    with io.atomic_path(args.out) as tmp:
        picture.save(tmp, format="PNG" if args.out.suffix.lower() == ".png" else "JPEG")
    y, x = divmod(int(heat.argmax()), heat.shape[1])
    print(f"wrote {args.out} ({heat.shape[1]}x{heat.shape[0]}; map maximum at x={x}, y={y})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from medxpert_utils.retrieval.classification import evaluate_classification, format_summary
    from medxpert_utils.retrieval.evaluation import evaluate_run, format_table, image_to_image_table

    result = evaluate_run(args.run, write=args.write)
    classes = evaluate_classification(args.run, write=args.write)
    if args.json:
        print(json.dumps({**result, "classification": classes}, indent=2))
    else:
        print(format_table(result))
        print(image_to_image_table(result).to_string())
        print(format_summary(classes))
    return 0


def cmd_export_csv(args: argparse.Namespace) -> int:
    from medxpert_utils.retrieval.search import export_csv

    path = export_csv(args.run, split=args.split, k=args.k, model=args.model, out=args.out)
    print(f"wrote {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from medxpert_utils.app.sweep import run_sweep

    summary = run_sweep(args.sweep, until=args.until, parallel=args.parallel, dry_run=args.dry_run)
    # run_sweep has printed each failure and where to look; the exit code tells scripts and CI.
    compared = (summary.get("comparison") or {}).get("status") != "failed"
    return 0 if summary.get("failed", 0) == 0 and compared else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medxpert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the notebook chain with papermill")
    p.add_argument("params", nargs="?", default="params/demo.yaml", help="params YAML or profile name (default: demo)")
    p.add_argument("--run", help="run name under outputs/ or a path (default: the profile's name)")
    p.add_argument("--from", dest="start", help="start at this notebook number, e.g. 02 (resume)")
    p.add_argument("--only", nargs="+", help="run only these notebook numbers")
    p.add_argument("--until", help="stop after this notebook number")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a param, e.g. --set train.epochs=1")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="notebooks run at once, each when the ones it reads from are done (default: the params' "
                        "parallel_notebooks)")
    p.add_argument("--force", nargs="*", metavar="NN",
                   help="redo stages even when up to date: every selected one, or the numbers given (--force 01)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="each stage of a run fresh, stale or missing, and why (runs nothing)")
    p.add_argument("params", nargs="?", default=None,
                   help="params YAML or profile name to compare with (default: the params the run last used)")
    p.add_argument("--run", help="run name under outputs/ or a path (default: the params' profile name)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a param, e.g. --set train.lr=1e-4")
    p.add_argument("--json", action="store_true", help="print JSON: {run, stages: [{name, state, reasons}, ...]}")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("search", help="top-K similar cases for a text or image query")
    p.add_argument("--run", required=True, help="run name under outputs/ or a path to a run folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="free-text query, e.g. 'signs of pneumonia'")
    q.add_argument("--image", type=Path, help="chest X-ray file (PNG, JPEG or DICOM)")
    q.add_argument("--audio", type=Path, help="spoken query (WAV, FLAC, OGG or WebM), transcribed with params asr")
    p.add_argument("-k", type=int, default=5, help="number of hits (clamped to the corpus size)")
    p.add_argument("--model", default="fine_tuned", choices=["fine_tuned", "zero_shot"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("diagnose", help="structured diagnosis report for an image or a text query (research only)")
    p.add_argument("--run", required=True, help="run name under outputs/ or a path to a run folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", type=Path, help="chest X-ray file (PNG, JPEG or DICOM)")
    q.add_argument("--text", help="free-text description or query")
    q.add_argument("--audio", type=Path, help="spoken query (WAV, FLAC, OGG or WebM), transcribed with params asr")
    p.add_argument("--question", help="optional question to answer, e.g. 'signs of pneumonia?'")
    p.add_argument("-k", type=int, default=None, help="retrieved cases used as evidence (default: params report.top_k)")
    p.add_argument("--generator", default="auto", choices=["auto", "offline", "gemini"],
                   help="auto: Gemini when GEMINI_API_KEY/GOOGLE_API_KEY is set, else the offline reporter")
    p.add_argument("--model", default="fine_tuned", choices=["fine_tuned", "zero_shot"])
    p.add_argument("--json", action="store_true", help="print the DiagnosisReport as JSON")
    p.add_argument("--force", action="store_true",
                   help="report even when the query check finds the query unlike the run's radiographs (exit 3 "
                        "without it)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("explain", help="heatmap of where a text matches an image, overlaid on the image (PNG)")
    p.add_argument("--run", required=True, help="run name under outputs/ or a path to a run folder")
    p.add_argument("--image", type=Path, required=True, help="chest X-ray file (PNG, JPEG or DICOM)")
    p.add_argument("--text", required=True, help="what to find, e.g. 'left pleural effusion'")
    p.add_argument("--out", type=Path, required=True, help="output picture (.png or .jpg)")
    p.add_argument("--model", default="fine_tuned", choices=["fine_tuned", "zero_shot"])
    p.add_argument("--method", choices=list(METHODS),
                   help="map method (default: the one the run's grounding evaluation chose)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("eval", help="recompute retrieval and classification metrics from a run's saved embeddings")
    p.add_argument("--run", required=True, help="run name under outputs/ or a path to a run folder")
    p.add_argument("--json", action="store_true", help="print the metrics JSON")
    p.add_argument("--write", action="store_true",
                   help="also rewrite metrics/retrieval.json, the CSV table and metrics/classification.json")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export-csv", help="every query of a split with its top-K hits, as CSV")
    p.add_argument("--run", required=True, help="run name under outputs/ or a path to a run folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--model", default="fine_tuned", choices=["fine_tuned", "zero_shot"])
    p.add_argument("--out", type=Path, help="CSV path (default: <run>/exports/<split>_top<k>_<model>.csv)")
    p.set_defaults(func=cmd_export_csv)

    p = sub.add_parser("sweep", help="run the chain once per parameter combination of a sweep file")
    p.add_argument("sweep", help="sweep YAML, e.g. params/sweeps/demo_grid.yaml")
    p.add_argument("--until", help="run each combination only up to this notebook number, e.g. 03")
    p.add_argument("--parallel", type=int, default=None, help="runs at once (default: the sweep file's, else 1)")
    p.add_argument("--dry-run", action="store_true", help="list the combinations and run names, run nothing")
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "k", 1) is not None and getattr(args, "k", 1) <= 0:
        parser.error("-k must be a positive number of hits")
    if getattr(args, "text", None) is not None and not args.text.strip():
        example = "'left pleural effusion'" if args.command == "explain" else "'signs of pneumonia'"
        print(f"medxpert: error: empty query - pass a non-empty --text, e.g. --text {example}",
              file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"medxpert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medxpert: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
