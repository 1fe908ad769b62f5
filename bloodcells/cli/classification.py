"""Commands for classification: train, calibrate, classify, evaluate."""

from __future__ import annotations

import argparse

from . import (
    TREE_IN_USE,
    CommandError,
    command,
    output_file,
    output_folder,
    plural,
    print_problems,
    real,
    whole,
    written_tree,
)


def _tree_option(parser):
    parser.add_argument("--tree", help="cell-type tree: bundled name or YAML file (default: default)")


# -- train ------------------------------------------------------------------------------------
def _training_options(parser, defaults):
    """Options that shape a training run (train, and the experiments of evaluate), each defaulting
    to its value in the TrainConfig ``defaults``."""
    from ..backbones import KNOWN_BACKBONES
    from ..train import MODES

    parser.add_argument("--backbone", default=defaults.architecture,
                        help="any timm name; known here: " + ", ".join(KNOWN_BACKBONES) + " (default %(default)s)")
    parser.add_argument("--size", type=whole(16), default=defaults.input_size,
                        help="input size in pixels (default %(default)s)")
    parser.add_argument("--mode", default=defaults.mode, choices=list(MODES),
                        help="from scratch or from pretrained weights; +aug: every training image augmented, "
                             "not only the repeats that balance the classes (default %(default)s)")
    parser.add_argument("--pretrained", metavar="CHECKPOINT",
                        help="local pretrained weights file for the pretrained modes (default: the ImageNet "
                             "weights a package ships, for the backbones listed in bloodcells.pretrained)")
    parser.add_argument("--no-cross-site", action="store_true",
                        help="only the mild microscopy augmentation (default: strong stain, colour and scale "
                             "changes too)")
    parser.add_argument("--stain-norm", action=argparse.BooleanOptionalAction, default=defaults.stain_norm,
                        help="per-image colour standardisation before the network "
                             f"(default: {'on' if defaults.stain_norm else 'off'})")
    parser.add_argument("--plain-background", type=real(0, 1), default=defaults.plain_background, metavar="SHARE",
                        help="this share of augmented images (0-1) shows the centred cell on a plain field, "
                             "so the cell alone carries the answer (default %(default)s)")
    parser.add_argument("--cell-focus", type=real(0), default=defaults.cell_focus, metavar="WEIGHT",
                        help="weight of a loss on the class evidence (CAM) found outside the stained cell, so the "
                             "network and its Grad-CAM maps look at the cell; EfficientNet and ResNet backbones "
                             "only (default %(default)s; 0: off)")
    parser.add_argument("--ema", type=real(0, 1, high_included=False), default=defaults.ema, metavar="DECAY",
                        help="validate and keep a moving average of the weights with this decay per step "
                             "(e.g. 0.998; default %(default)s: the weights as trained)")
    parser.add_argument("--epochs", type=whole(1), default=defaults.epochs,
                        help="epochs at most (default %(default)s)")
    parser.add_argument("--batch-size", type=whole(1), default=defaults.batch_size,
                        help="images per training step (default %(default)s)")
    parser.add_argument("--lr", type=real(0, low_included=False), default=defaults.learning_rate,
                        help="learning rate (default %(default)s)")
    parser.add_argument("--patience", type=whole(1), default=defaults.patience,
                        help="early stopping patience in epochs (default %(default)s)")
    parser.add_argument("--min-per-class", type=whole(1), default=defaults.min_per_class,
                        help="with --per-class 0: each child gets at least this many images per epoch "
                             "(oversampled; default %(default)s)")
    parser.add_argument("--per-class", type=whole(0), default=defaults.per_class or 0,
                        help="balancing: exactly this many images per child per epoch, in place of "
                             "--min-per-class (default %(default)s; 0: --min-per-class balances)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the data split, sampling and augmentation (default %(default)s)")
    parser.add_argument("--shared-trunk", action=argparse.BooleanOptionalAction, default=defaults.shared_trunk,
                        help="one network for the whole tree, fine-tuned on every cell type, with a head "
                             "per node trained on that node's data (one network pass per cell); off: a network "
                             f"per node (default: {'on' if defaults.shared_trunk else 'off'})")
    parser.add_argument("--review-accuracy", type=real(0, 1, low_included=False), default=defaults.review_accuracy,
                        help="cells below the confidence that keeps this accuracy on validation cells are "
                             "flagged for review (default %(default)s)")
    parser.add_argument("--review-certainty", type=real(0.5, 1, high_included=False),
                        default=defaults.review_certainty,
                        help="how sure the validation cells must make that accuracy: the one-sided "
                             "Clopper-Pearson lower bound at this level counts (default %(default)s)")
    parser.add_argument("--head-views", type=whole(1), default=defaults.head_views,
                        help="shared trunk: each training cell as it is plus this many - 1 augmented views "
                             "(default %(default)s)")
    parser.add_argument("--workers", type=whole(0), default=defaults.workers,
                        help="processes that augment the next batches while the network trains: on a GPU the "
                             "network otherwise waits for them (default %(default)s: in turn, in the training "
                             "process; the same seed gives the same cells whatever the number)")


def _config(args):
    from ..train import TrainConfig

    try:
        return TrainConfig(
            architecture=args.backbone, input_size=args.size, mode=args.mode,
            pretrained_checkpoint=args.pretrained, cross_site=not args.no_cross_site,
            stain_norm=args.stain_norm, plain_background=args.plain_background,
            cell_focus=args.cell_focus, ema=args.ema, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, min_per_class=args.min_per_class,
            per_class=args.per_class or None, seed=args.seed, nodes=getattr(args, "nodes", None),
            shared_trunk=args.shared_trunk, head_views=args.head_views, review_accuracy=args.review_accuracy,
            review_certainty=args.review_certainty, workers=args.workers)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _train_args(parser):
    from ..train import SHIPPED_RECIPE

    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="folder of class folders, .zip of the same, or CSV (path,label[,patient]); "
                             "repeat to combine sources")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the trained tree: a new folder, or a tree folder it replaces whole "
                             "(the shipped one is models/classifier/default: name it to replace it)")
    _tree_option(parser)
    _training_options(parser, SHIPPED_RECIPE)  # what models/classifier/default was trained with
    parser.add_argument("--nodes", type=lambda text: text.split(","),
                        help="train only these nodes (comma-separated codes)")
    parser.add_argument("--no-register", action="store_true", help="do not record the models in the database")


@command("train", "train the tree of cell classifiers (by default as the shipped one was trained)", _train_args)
def _train(args) -> int:
    from ..backbones import PretrainedWeightsError
    from ..train import train_tree

    config = _config(args)
    output_folder(args.out)
    store = None
    if not args.no_register:
        from ..store import open_store

        store = open_store()
    with TqdmProgress("epochs") as progress:
        try:
            report = train_tree(args.data, args.out, tree=args.tree, config=config, store=store, progress=progress,
                                log=progress.write)
        except (PretrainedWeightsError, ValueError) as error:
            raise CommandError(str(error)) from error
    print(written_tree(report.out_dir))
    return 0


def _calibrate_args(parser):
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="the sources the tree was trained on (its validation cells are rebuilt from them)")
    parser.add_argument("--models", help=f"models folder (default: {TREE_IN_USE})")


@command("calibrate", "refit a trained tree's temperatures and review threshold on its validation cells",
         _calibrate_args)
def _calibrate(args) -> int:
    from ..classify import ModelFileError, default_models_dir
    from ..train import calibrate_tree

    try:
        calibrate_tree(args.models or default_models_dir(), args.data)
    except (ModelFileError, ValueError) as error:
        raise CommandError(str(error)) from error
    return 0


class TqdmProgress:
    """A tqdm bar driven by the ``progress(done, total, text)`` callbacks, drawn once per new state.

    Left to itself tqdm also draws a bar when it is made, when its text is set and when it is closed:
    a run that reported its end twice showed its finished bar four times (in a log, on four lines).
    Here tqdm never draws on its own (``delay`` never passes); the bar is drawn when a callback
    changes it, and ended with a new line.
    """

    def __init__(self, unit: str):
        self.unit = unit
        self.bar = None
        self.shown: tuple | None = None  # (done, total, text) last drawn

    def __enter__(self):
        return self

    def __exit__(self, *_):
        if self.bar is not None:
            self.bar.close()
            self.bar.fp.write("\n")

    def __call__(self, done: int, total: int | None, text: str = "") -> None:
        import math

        from tqdm import tqdm

        if self.bar is None:
            # The first callback comes after the first step's work (an epoch can take minutes):
            # counted from there, so the rate and time left are not figured from a zero start.
            self.bar = tqdm(total=total, initial=done, unit=self.unit, dynamic_ncols=True, delay=math.inf)
        if (done, total, text) == self.shown:
            return
        if total is not None:
            self.bar.total = total
        self.bar.n = done
        if text:
            self.bar.set_postfix_str(text, refresh=False)
        self.bar.refresh()
        self.shown = (done, total, text)

    def write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text)


# -- classify ---------------------------------------------------------------------------------
def _classify_args(parser):
    parser.add_argument("input", help="a cell image, a folder of them (recursive) or a .zip")
    parser.add_argument("--out", help="write file,code,name,path,confidence,needs_review to this CSV")
    parser.add_argument("--models", help=f"models folder (default: {TREE_IN_USE})")
    parser.add_argument("--batch-size", type=whole(1), default=64, help="cells per batch (default %(default)s)")
    parser.add_argument("--flips", action="store_true",
                        help="test-time augmentation: average over the four flips of each cell; about 2.5x "
                             "slower and no more accurate on the shipped tree (leaf accuracy 0.881 without, "
                             "0.880 with: docs/classification.md)")
    parser.add_argument("--no-store", action="store_true", help="do not record the analysis in the database")


@command("classify", "classify single-cell images with the tree", _classify_args)
def _classify(args) -> int:
    from ..classify import ModelFileError, TreeClassifier, classify

    output_file(args.out, reads=args.input)
    try:
        classifier = TreeClassifier.load(args.models)
    except ModelFileError as error:
        raise CommandError(str(error)) from error
    store = None
    if not args.no_store:
        from ..store import open_store

        store = open_store()
    with TqdmProgress("cells") as progress:
        outcome = classify(args.input, classifier=classifier, store=store, progress=progress,
                           batch_size=args.batch_size, flips=args.flips)
    print_problems(outcome.problems)
    for warning in outcome.warnings:
        print(f"warning: {warning}")
    counts = ", ".join(f"{code} {n}" for code, n in outcome.counts().items())
    review = sum(row.result.needs_review for row in outcome.rows)
    print(f"{plural(len(outcome.rows), 'cell')}: {counts}; {review} to review"
          + (f"; analysis {outcome.analysis_id}" if outcome.analysis_id else ""))
    if args.out:
        print(f"written {outcome.write_csv(args.out)}")
    else:
        for filename, result in outcome.rows:
            print(f"{filename}\t{result.code}\t{result.path}\t{result.confidence:.3f}"
                  + ("\treview" if result.needs_review else ""))
    return 0


# -- evaluate ---------------------------------------------------------------------------------
def _evaluate_args(parser):
    from ..train import MODES, TrainConfig

    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="labelled cells (as for train); repeat to combine")
    parser.add_argument("--models", help=f"models folder (default: {TREE_IN_USE})")
    parser.add_argument("--out", help="write confusion matrices (CSV, PNG) and training curves (PNG) here")
    parser.add_argument("--all", action="store_true",
                        help="score every cell, also those training used (default: only unseen cells)")
    parser.add_argument("--at", type=lambda text: text.split(","), metavar="CODES",
                        help="also score each source with cell types merged into these codes "
                             "(e.g. PBC's classes: EBO,LYT,MYI,NEU,BAS,EOS,MON,PLT)")
    parser.add_argument("--compare", action="store_true",
                        help="train every --backbones x --modes on --data and print accuracy per node")
    parser.add_argument("--cross-site", action="store_true",
                        help="with two --data sites: train on each alone, score the cell types they share "
                             "on the other")
    experiments = parser.add_argument_group("training (only with --compare or --cross-site)")
    experiments.add_argument("--backbones", type=lambda text: text.split(","), metavar="NAMES",
                             default=["mobilenetv3_small_100", "mobilenetv3_large_100"],
                             help="--compare: the timm backbones to train, comma-separated "
                                  "(default mobilenetv3_small_100,mobilenetv3_large_100)")
    experiments.add_argument("--modes", type=lambda text: text.split(","), metavar="MODES",
                             default=["scratch", "scratch+aug"],
                             help=f"--compare: the training modes to try, comma-separated, of {', '.join(MODES)} "
                                  "(default scratch,scratch+aug)")
    _tree_option(experiments)
    # the library's small defaults, not the shipped recipe: an experiment sets its own budget (Makefile)
    _training_options(experiments, TrainConfig())


@command("evaluate", "score a trained tree on labelled cells; compare backbones; measure cross-site accuracy",
         _evaluate_args)
def _evaluate(args) -> int:
    from ..classify import ModelFileError
    from ..evaluate import compare, cross_site, evaluate, format_comparison

    if args.cross_site:
        if len(args.data) != 2:
            raise CommandError("--cross-site needs exactly two --data sites")
        cross_site(args.data[0], args.data[1], _config(args), tree=args.tree)
        return 0
    if args.compare:
        print(format_comparison(compare(args.data, args.backbones, args.modes, _config(args), tree=args.tree)))
        return 0
    output_folder(args.out)
    try:
        evaluate(args.data, args.models, out_dir=args.out, unseen_only=not args.all, at=args.at)
    except (ModelFileError, ValueError) as error:
        raise CommandError(str(error)) from error
    return 0
