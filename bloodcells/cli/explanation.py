"""Commands for explanation: ``explain`` (attribution maps) and ``train-attributes`` (morphology head)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import TREE_IN_USE, CommandError, command, output_file, output_folder, plural, real, whole


def _configure_explain(parser: argparse.ArgumentParser) -> None:
    from ..explain import METHODS

    parser.add_argument("image", type=Path, help="a single-cell image")
    parser.add_argument("--method", default="gradcam", choices=list(METHODS),
                        help="attribution method (default: gradcam)")
    parser.add_argument("--node", help="explain this tree node's model only (default: every level of the "
                                       "predicted path)")
    parser.add_argument("--target", help="explain the choice of this cell type (default: the predicted one)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write: the overlays, one per level")
    parser.add_argument("--models", type=Path, help=f"trained classifier folder (default: {TREE_IN_USE})")
    parser.add_argument("--steps", type=whole(1), help="integrated-gradients: integration steps (default 32)")
    parser.add_argument("--window", type=whole(1), help="occlusion: window side in model pixels (default: input/4)")
    parser.add_argument("--stride", type=whole(1), help="occlusion: stride in model pixels (default: window/2)")
    parser.add_argument("--cache", action="store_true",
                        help="read and store maps in the database (BLOODCELLS_DATABASE_URL)")


@command("explain", "show which pixels made each level of the tree choose its answer", _configure_explain)
def explain_command(args: argparse.Namespace) -> int:
    import zipfile

    from PIL import Image

    from ..classify import ModelFileError, load_classifier
    from ..explain import METHODS, ExplanationError, explain

    if not args.image.is_file():
        raise CommandError(f"{args.image}: no such image")
    if zipfile.is_zipfile(args.image):  # it said "not an image (the content is not in a format Pillow reads...)"
        raise CommandError(f"{args.image}: a zip; explain takes one image (take one out of it, or classify the zip "
                           "and explain its cells on the Explanation page)")
    if args.out.suffix.lower() != ".png":
        raise CommandError(f"{args.out}: the output must be a .png file")
    output_file(args.out, reads=args.image)
    given = {"--steps": ("n_steps", args.steps), "--window": ("window", args.window),
             "--stride": ("stride", args.stride)}  # option -> (the method's setting, value)
    settings = {name: value for name, value in given.values()
                if value is not None and name in METHODS[args.method].defaults}
    ignored = [option for option, (name, value) in given.items() if value is not None and name not in settings]
    if ignored:
        raise CommandError(f"{args.method} does not use {', '.join(ignored)}")
    started = time.perf_counter()
    try:
        classifier = load_classifier(args.models)
        loaded = time.perf_counter()
        store = None
        if args.cache:
            from ..store import open_store

            store = open_store()
        levels = explain(args.image, classifier, method=args.method, node=args.node, target=args.target,
                         store=store, **settings)
    except (ModelFileError, ExplanationError) as error:
        raise CommandError(str(error)) from error
    finished = time.perf_counter()
    sheet = Image.new("RGB", (sum(level.overlay.width for level in levels),
                              max(level.overlay.height for level in levels)), "white")
    left = 0
    for level in levels:
        sheet.paste(level.overlay, (left, 0))
        left += level.overlay.width
        print(f"{level.node} -> {level.target}  p={level.probability:.2f}  {level.seconds:.3f} s"
              f"{'  (cached)' if level.cached else ''}")
    sheet.save(args.out)
    print(f"{args.method}: {plural(len(levels), 'level')} explained in {finished - loaded:.2f} s "
          f"(models loaded in {loaded - started:.2f} s); wrote {args.out}")
    _print_attributes(args.image, classifier)
    return 0


def _print_attributes(image: Path, classifier) -> None:
    """The morphology in words, when an attribute head for this classifier is installed."""
    from ..morphology import AttributeHeadError, describe, predict_attributes

    try:
        attributes = predict_attributes(image, classifier)
    except AttributeHeadError as error:
        print(f"(no morphology: {error})")
        return
    print(f"morphology: {describe(attributes)}")


def _configure_train_attributes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, required=True,
                        help="attribute table (WBCAtt's pbc_attributes.csv: img_name, label, attributes..., path)")
    parser.add_argument("--images", type=Path, help="folder the csv's paths are relative to (default: the csv's "
                                                    "parent's parent, as in ../shared/datasets)")
    parser.add_argument("--models", type=Path,
                        help=f"trained classifier folder whose features are used (default: {TREE_IN_USE})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where to write the head (the shipped one is models/attributes/default: name it to "
                             "replace it)")
    parser.add_argument("--test-fraction", type=real(0, 1, low_included=False, high_included=False), default=0.2, help="share of images held out (default 0.2)")
    parser.add_argument("--own-backbone", action="store_true",
                        help="train a small backbone of the head's own on the table's images (into OUT/backbone) "
                             "instead of reading the classifier's features")


@command("train-attributes", "train the morphology attribute head on a classifier's features",
         _configure_train_attributes)
def train_attributes_command(args: argparse.Namespace) -> int:
    from ..classify import ModelFileError, load_classifier
    from ..morphology import AttributeDataError, train_attribute_head, train_own_backbone

    output_folder(args.out)
    try:
        if args.own_backbone:
            head = train_own_backbone(args.csv, args.out, images_root=args.images, log=print)
        else:
            head = train_attribute_head(args.csv, load_classifier(args.models), out_dir=args.out,
                                        images_root=args.images, test_fraction=args.test_fraction, log=print)
    except (ModelFileError, AttributeDataError) as error:
        raise CommandError(str(error)) from error
    # each attribute's accuracy was logged as it was fitted: only the summary is left to say
    print(f"mean accuracy {head.metrics['mean_accuracy']:.3f}; wrote {head.path}")
    return 0
