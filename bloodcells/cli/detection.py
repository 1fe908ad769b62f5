"""Commands for detection: train-detector, evaluate-detector, detect."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import TREE_IN_USE, CommandError, command, output_file, output_folder, plural, print_problems, real, whole


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="YOLO dataset (data.yaml or its folder) or Pascal VOC folder; repeat to combine")
    parser.add_argument("--model", default="yolo11n.yaml",
                        help="ultralytics model config (trained from scratch) or a local .pt (default %(default)s)")
    parser.add_argument("--epochs", type=whole(1), default=50, help="epochs at most (default %(default)s)")
    parser.add_argument("--hours", type=real(0, low_included=False), default=None,
                        help="stop after this many hours (epochs are re-planned to fit)")
    parser.add_argument("--imgsz", type=whole(32), default=320, help="training input size in pixels (default %(default)s)")
    parser.add_argument("--batch", type=whole(1), default=16, help="images per training step (default %(default)s)")
    parser.add_argument("--workers", type=whole(0), default=2,
                        help="processes that load and augment the images (default %(default)s)")
    parser.add_argument("--patience", type=whole(1), default=20,
                        help="stop after this many epochs without a better validation score (default %(default)s)")
    parser.add_argument("--multi-scale", type=real(0, 1, high_included=False), default=0.0, metavar="FRACTION",
                        help="train each batch at a size within this fraction of --imgsz (default 0: off)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache the images in RAM")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for detector.pt and metrics.json (the shipped one is models/detector: "
                             "name it to replace it)")


@command("train-detector", "train the YOLO cell detector (white cells, red cells, platelets)", _configure_train)
def train_detector_command(args: argparse.Namespace) -> int:
    from ..detection import train_detector

    output_folder(args.out)
    try:
        trained = train_detector(args.data, model=args.model, epochs=args.epochs, hours=args.hours,
                                 imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                                 cache=False if args.no_cache else "ram", patience=args.patience,
                                 multi_scale=args.multi_scale, out=args.out)
    except ValueError as error:  # bad settings, or a DatasetError
        raise CommandError(str(error)) from error
    print(f"wrote {trained.path}")
    for tag, metrics in trained.metrics.items():
        print(f"== val: {tag}")
        _print_metrics(metrics)
    return 0


def _configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="YOLO dataset or Pascal VOC folder")
    parser.add_argument("--model", type=Path, default=None, help="detector weights (default models/detector/*.pt)")
    parser.add_argument("--split", default="val", choices=["train", "val"], help="the split to score (default %(default)s)")
    parser.add_argument("--imgsz", type=whole(32), default=None, help="default: the size it was trained at")


@command("evaluate-detector", "precision, recall, mAP50 and mAP50-95 per class on a labelled dataset",
         _configure_evaluate)
def evaluate_detector_command(args: argparse.Namespace) -> int:
    from ..detection import DatasetError, DetectorFileError, evaluate_detector

    try:
        metrics = evaluate_detector(args.data, model=args.model, imgsz=args.imgsz, split=args.split)
    except (DatasetError, DetectorFileError) as error:
        raise CommandError(str(error)) from error
    _print_metrics(metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    print(f"{'class':<8}{'boxes':>8}{'P':>8}{'R':>8}{'mAP50':>8}{'mAP50-95':>10}")
    rows = [*metrics["classes"].items(), ("all", metrics["overall"])]
    for name, row in rows:
        count = row.get("instances", "")
        print(f"{name:<8}{count!s:>8}{row['precision']:>8.3f}{row['recall']:>8.3f}{row['mAP50']:>8.3f}"
              f"{row['mAP50-95']:>10.3f}")


def _configure_detect(parser: argparse.ArgumentParser) -> None:
    from ..detection import DEFAULT_BOX_CONFIDENCE, DEFAULT_WBC_TARGET, LARGEST_RED_CELL, MIN_TILE_SIZE

    parser.add_argument("input", help="a smear-field image, a folder of them (recursive) or a .zip")
    parser.add_argument("--out", type=Path, required=True,
                        help="CSV: file,class,confidence,x1,y1,x2,y2,code,path,sub_confidence")
    parser.add_argument("--annotated", type=Path, default=None, metavar="DIR",
                        help="also write each image with its boxes drawn (PNG) into DIR")
    parser.add_argument("--model", type=Path, default=None, help="detector weights (default models/detector/*.pt)")
    parser.add_argument("--classifier", type=Path, default=None, metavar="DIR",
                        help=f"classifier tree for the white cells (default: {TREE_IN_USE})")
    parser.add_argument("--no-typing", action="store_true", help="do not classify the white cells")
    parser.add_argument("--conf", type=real(0, 1), default=DEFAULT_BOX_CONFIDENCE,
                        help="minimum box confidence (default %(default)s)")
    parser.add_argument("--tile-size", type=whole(1), default=None,
                        help="tile images larger than this by a quarter (default: twice the model input); at least "
                             f"{MIN_TILE_SIZE}: tiles overlap by a quarter, which must hold a red cell "
                             f"(~{LARGEST_RED_CELL} px) whole")
    parser.add_argument("--no-store", action="store_true", help="do not record the analysis in the database")
    parser.add_argument("--slide", action="store_true",
                        help="the images are fields of one slide: overlapping fields are registered and each cell "
                             "counted once; prints whole-slide counts and the white-cell differential to a target")
    parser.add_argument("--wbc-target", type=int, default=None, metavar="N",
                        help=f"with --slide: white cells the differential counts (default {DEFAULT_WBC_TARGET}; "
                             "usually 100 or 200)")


@command("detect", "find and count cells on smear fields; type the white cells with the classifier tree",
         _configure_detect)
def detect_command(args: argparse.Namespace) -> int:
    from ..classify import ModelFileError, TreeClassifier
    from ..detection import DEFAULT_WBC_TARGET, Detector, DetectorFileError, check_tile_size, check_wbc_target, detect
    from ..inputs import disk_path

    output_file(args.out, reads=args.input)
    output_folder(args.annotated, reads=args.input)
    if args.wbc_target is not None and not args.slide:
        raise CommandError("--wbc-target counts a slide's white cells: add --slide")
    wbc_target = DEFAULT_WBC_TARGET if args.wbc_target is None else args.wbc_target
    try:
        check_wbc_target(wbc_target)
        if args.tile_size is not None:
            check_tile_size(args.tile_size)
    except ValueError as error:
        raise CommandError(str(error)) from error
    try:
        detector = Detector.load(args.model, tile_size=args.tile_size)
        classifier = TreeClassifier.load(args.classifier) if args.classifier and not args.no_typing else None
    except (DetectorFileError, ModelFileError) as error:
        raise CommandError(str(error)) from error
    store = None
    if not args.no_store:
        from ..store import open_store

        store = open_store()
    result = detect(args.input, detector=detector, classifier=classifier, type_white_cells=not args.no_typing,
                    confidence=args.conf, store=store, annotate_to=args.annotated, slide=args.slide,
                    wbc_target=wbc_target)
    result.write_csv(args.out)
    print_problems(result.problems)
    if result.typing_skipped:
        print(f"white cells not typed: {result.typing_skipped}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    stored = f"; analysis {result.analysis_id}" if result.analysis_id else ""
    if result.slide is not None:
        _print_slide(result.slide, stored)
    else:
        for file in result.files:
            print(f"{file}: {_counts_line(result.counts(file), result.differential(file))}")
        print(f"all {plural(len(result.files), 'image')}: {_counts_line(result.counts(), result.differential())}{stored}")
    for drawing, file in result.annotated.items():
        if drawing != str(disk_path(file, ".png")):  # where it is not where one would look for it
            print(f"{file}: drawn as {drawing} (the name it would have is another image's)")
    print(f"written {args.out}" + (f" and annotated images in {args.annotated}" if args.annotated else ""))
    return 0


def _counts_line(counts: dict[str, int], differential: dict[str, dict]) -> str:
    text = ", ".join(f"{code} {n}" for code, n in counts.items())
    if differential:
        text += " | white cells: " + differential_line({code: row["count"] for code, row in differential.items()})
    return text


def differential_line(typed: dict[str, int]) -> str:
    """White cells per type as the report to sign and the pages show them (``signout.clinical_rows``):
    rows in clinical order, percentages to a tenth over the cells counted; platelets, smudge and
    unidentifiable cells apart (the CLI printed each type over every typed cell: NGS 50% on the
    command line was 67% in the PDF), and erythroblasts too: smear fields are a blood film."""
    from ..signout import PERIPHERAL_BLOOD, clinical_rows

    rows, apart, counted = clinical_rows([code for code, n in typed.items() for _ in range(int(n))],
                                         specimen=PERIPHERAL_BLOOD)
    text = f"{counted} counted" + "".join(f", {row.label} {row.count} ({row.percent:.1f}%)" for row in rows if row.count)
    left_out = ", ".join(f"{row.label} {row.count}" for row in apart if row.count)
    return text + (f"; not in the count: {left_out}" if left_out else "")


def _print_slide(slide, stored: str) -> None:
    """The overlaps found, each field's counts, and the whole slide's."""
    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    groups = slide.groups
    print(f"slide: {plural(len(slide.fields), 'field')}, "
          f"{plural(sum(len(g) > 1 for g in groups), 'group')} of overlapping fields, "
          f"{plural(sum(len(g) == 1 for g in groups), 'field')} overlapping no other")
    for o in slide.overlaps:
        print(f"  {o.first} + {o.second}: offset ({o.dx:+.0f}, {o.dy:+.0f}), {o.overlap:.0%} of the smaller "
              f"field, agreement {o.agreement:.2f}")
    for f in slide.fields:
        where = f"group {f.group + 1} at ({f.x}, {f.y})" if len(groups[f.group]) > 1 else "overlaps no other"
        print(f"{f.file}: found {_counts_line(f.found, {})}; counted once {_counts_line(f.counted, {})} ({where})")
    print(f"whole slide, each cell once: {_counts_line(slide.counts, {})}{stored}")
    print(f"red cells per field: {slide.rbc_per_field}; platelets per field: {slide.plt_per_field}")
    ratio = slide.platelet_rbc_ratio
    print("platelet:red cell ratio " + ("n/a (no red cells)" if ratio is None else f"{ratio:.3f}"))
    white = slide.white_cells
    differential = differential_line({code: row["count"] for code, row in white.differential.items()})
    print(f"differential: {white}" + (f" | {differential}" if white.differential else "")
          + (f" | {white.untyped} not typed" if white.untyped else ""))
