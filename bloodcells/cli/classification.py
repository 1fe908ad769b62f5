"""Commands for classification: train, calibrate, classify, evaluate."""

from __future__ import annotations

from . import CommandError, command, output_file, output_folder, real, whole


def _tree_option(parser):
    parser.add_argument("--tree", help="cell-type tree: bundled name or YAML file (default: default)")


# -- train ------------------------------------------------------------------------------------
def _training_options(parser):
    """Options that shape a training run (train, and the experiments of evaluate)."""
    from ..backbones import KNOWN_BACKBONES

    parser.add_argument("--backbone", default="mobilenetv3_small_100",
                        help="any timm name; known here: " + ", ".join(KNOWN_BACKBONES))
    parser.add_argument("--size", type=whole(16), default=64, help="input size in pixels (default 64)")
    parser.add_argument("--mode", default="scratch+aug",
                        choices=["scratch", "scratch+aug", "pretrained", "pretrained+aug"])
    parser.add_argument("--pretrained", metavar="CHECKPOINT",
                        help="local pretrained weights file for the pretrained modes (default: the ImageNet "
                             "weights a package ships, for the backbones listed in bloodcells.pretrained)")
    parser.add_argument("--no-cross-site", action="store_true",
                        help="only the mild microscopy augmentation (no strong stain/colour/scale changes)")
    parser.add_argument("--no-stain-norm", action="store_true", help="no per-image colour standardisation")
    parser.add_argument("--plain-background", type=float, default=0.0, metavar="SHARE",
                        help="this share of augmented images (0-1) shows the centred cell on a plain field, "
                             "so the cell alone carries the answer (default 0)")
    parser.add_argument("--cell-focus", type=float, default=0.0, metavar="WEIGHT",
                        help="weight of a loss on the class evidence (CAM) found outside the stained cell, so the "
                             "network and its Grad-CAM maps look at the cell (default 0: off)")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="validate and keep a moving average of the weights with this decay per step "
                             "(e.g. 0.998; default 0: the weights as trained)")
    parser.add_argument("--epochs", type=whole(1), default=12)
    parser.add_argument("--batch-size", type=whole(1), default=64)
    parser.add_argument("--lr", type=real(0, low_included=False), default=2e-3)
    parser.add_argument("--patience", type=whole(1), default=4, help="early stopping patience in epochs")
    parser.add_argument("--min-per-class", type=whole(1), default=1000,
                        help="balancing: each child gets at least this many images per epoch (oversampled)")
    parser.add_argument("--per-class", type=whole(1), help="balancing: exactly this many images per child per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-trunk", action="store_true",
                        help="one network for the whole tree, fine-tuned on every cell type, with a head "
                             "per node trained on that node's data (one network pass per cell)")
    parser.add_argument("--review-accuracy", type=real(0, 1, low_included=False), default=0.97,
                        help="cells below the confidence that keeps this accuracy on validation cells are "
                             "flagged for review (default 0.97)")
    parser.add_argument("--review-certainty", type=float, default=0.9,
                        help="how sure the validation cells must make that accuracy: the one-sided "
                             "Clopper-Pearson lower bound at this level counts (default 0.9)")
    parser.add_argument("--head-views", type=whole(1), default=3,
                        help="shared trunk: each training cell as it is plus this many - 1 augmented views")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that augment the next batches while the network trains: on a GPU the "
                             "network otherwise waits for them (default 0: in turn, in the training process; "
                             "the same seed gives the same cells whatever the number)")


def _config(args):
    from ..train import TrainConfig

    try:
        return TrainConfig(
            architecture=args.backbone, input_size=args.size, mode=args.mode,
            pretrained_checkpoint=args.pretrained, cross_site=not args.no_cross_site,
            stain_norm=not args.no_stain_norm, plain_background=args.plain_background,
            cell_focus=args.cell_focus, ema=args.ema, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, min_per_class=args.min_per_class,
            per_class=args.per_class, seed=args.seed, nodes=getattr(args, "nodes", None),
            shared_trunk=args.shared_trunk, head_views=args.head_views, review_accuracy=args.review_accuracy,
            review_certainty=args.review_certainty, workers=args.workers)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _train_args(parser):
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="folder of class folders, .zip of the same, or CSV (path,label[,patient]); "
                             "repeat to combine sources")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the trained tree: a new folder, or a tree folder it replaces whole "
                             "(the shipped one is models/classifier/default: name it to replace it)")
    _tree_option(parser)
    _training_options(parser)
    parser.add_argument("--nodes", type=lambda text: text.split(","),
                        help="train only these nodes (comma-separated codes)")
    parser.add_argument("--no-register", action="store_true", help="do not record the models in the database")


@command("train", "train the tree of cell classifiers (one model per inner node)", _train_args)
def _train(args) -> int:
    from ..backbones import PretrainedWeightsError
    from ..train import train_tree

    config = _config(args)
    store = None
    if not args.no_register:
        from ..store import open_store

        store = open_store()
    with TqdmProgress("epochs") as progress:
        try:
            train_tree(args.data, args.out, tree=args.tree, config=config, store=store, progress=progress,
                       log=progress.write)
        except (PretrainedWeightsError, ValueError) as error:
            raise CommandError(str(error)) from error
    return 0


def _calibrate_args(parser):
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="the sources the tree was trained on (its validation cells are rebuilt from them)")
    parser.add_argument("--models", help="models folder (default: models/classifier/default)")


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
    """A tqdm bar driven by the ``progress(done, total, text)`` callbacks."""

    def __init__(self, unit: str):
        self.unit = unit
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int | None, text: str = "") -> None:
        from tqdm import tqdm

        if self.bar is None:
            # The first callback comes after the first step's work (an epoch can take minutes):
            # counted from there, so the rate and time left are not figured from a zero start.
            self.bar = tqdm(total=total, initial=done, unit=self.unit, dynamic_ncols=True)
        if total is not None:
            self.bar.total = total
        self.bar.n = done
        if text:
            self.bar.set_postfix_str(text)
        self.bar.refresh()

    def write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text)


# -- classify ---------------------------------------------------------------------------------
def _classify_args(parser):
    parser.add_argument("input", help="a cell image, a folder of them (recursive) or a .zip")
    parser.add_argument("--out", help="write file,code,name,path,confidence,needs_review to this CSV")
    parser.add_argument("--models", help="models folder (default: models/classifier/default)")
    parser.add_argument("--batch-size", type=whole(1), default=64)
    parser.add_argument("--flips", action="store_true",
                        help="test-time augmentation: average over the four flips of each cell (about 3x "
                             "slower, a few points more accurate: docs/classification.md)")
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
    for problem in outcome.problems:
        print(f"skipped {problem}")
    counts = ", ".join(f"{code} {n}" for code, n in outcome.counts().items())
    review = sum(row.result.needs_review for row in outcome.rows)
    print(f"{len(outcome.rows)} cells: {counts}; {review} to review"
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
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="labelled cells (as for train); repeat to combine")
    parser.add_argument("--models", help="models folder (default: models/classifier/default)")
    parser.add_argument("--out", help="write confusion matrices (CSV, PNG) and training curves (PNG) here")
    parser.add_argument("--all", action="store_true",
                        help="score every cell, also those training used (default: only unseen cells)")
    parser.add_argument("--at", type=lambda text: text.split(","), metavar="CODES",
                        help="also score each source with cell types merged into these codes "
                             "(e.g. PBC's classes: EBO,LYT,MYI,NEU,BAS,EOS,MON,PLT)")
    parser.add_argument("--compare", action="store_true",
                        help="train every --backbones x --modes on --data and print accuracy per node")
    parser.add_argument("--backbones", type=lambda text: text.split(","),
                        default=["mobilenetv3_small_100", "mobilenetv3_large_100"])
    parser.add_argument("--modes", type=lambda text: text.split(","), default=["scratch", "scratch+aug"])
    parser.add_argument("--cross-site", action="store_true",
                        help="with two --data sites: train on each alone, score the cell types they share "
                             "on the other")
    _tree_option(parser)
    _training_options(parser)


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
