"""``bloodcells adapt``: the tree tuned to a new lab's labelled cells (see ``bloodcells.adapt``)."""

from __future__ import annotations

from . import TREE_IN_USE, CommandError, command, output_folder, real, whole, written_tree


def _adapt_args(parser):
    from ..adapt import AdaptConfig

    defaults = AdaptConfig()
    parser.add_argument("--data", required=True, metavar="LABELLED",
                        help="the lab's labelled cells: a folder or .zip of class folders (tree codes, names or "
                             "aliases, e.g. Neutrophil/ or NGS/), the Review page's export, or a CSV (path,label)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the adapted tree (a new folder)")
    parser.add_argument("--models", metavar="DIR", help=f"the tree to start from (default: {TREE_IN_USE})")
    parser.add_argument("--hold-out", type=float, default=defaults.hold_out, metavar="FRACTION",
                        help=f"share of the lab's cells held back to score before and after, stratified "
                             f"(default {defaults.hold_out})")
    parser.add_argument("--replay", action="append", metavar="PATH",
                        help="the original training sources, replayed so that they do not regress "
                             "(default: the folders the tree's classifier.json names)")
    parser.add_argument("--epochs", type=whole(0), default=defaults.epochs,
                        help=f"epochs of the shared trunk; 0 retrains only the heads (default {defaults.epochs})")
    parser.add_argument("--per-label", type=whole(1), default=defaults.per_label,
                        help=f"cells per cell type per epoch (default {defaults.per_label})")
    parser.add_argument("--replay-per-label", type=whole(0), default=defaults.replay_per_label,
                        help=f"original cells replayed per cell type (default {defaults.replay_per_label}; 0: "
                             "none, when the original sources are not at hand: the tree then learns only the "
                             "lab's cell types)")
    parser.add_argument("--lr", type=real(0, low_included=False), default=defaults.learning_rate,
                        help="learning rate of the trunk (default %(default)s)")
    parser.add_argument("--layer-decay", type=float, default=defaults.layer_decay, metavar="FACTOR",
                        help="each layer below the trunk's top learns at this factor of the rate of the one above "
                             f"(default {defaults.layer_decay}: one rate)")
    parser.add_argument("--linear-probe", action="store_true",
                        help="fit the trunk's new classifier on its frozen features before fine-tuning it "
                             "(more accuracy on the new site, more lost on the original: docs/classification.md)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the hold-out, sampling and augmentation (default %(default)s)")


@command("adapt", "tune the tree to a new lab's camera and stain with a few of its labelled cells", _adapt_args)
def _adapt(args) -> int:
    from ..adapt import AdaptConfig, AdaptError, adapt
    from ..classify import ModelFileError
    from .classification import TqdmProgress

    output_folder(args.out)
    try:
        config = AdaptConfig(hold_out=args.hold_out, epochs=args.epochs, per_label=args.per_label,
                             replay_per_label=args.replay_per_label, learning_rate=args.lr, seed=args.seed,
                             layer_decay=args.layer_decay, linear_probe=args.linear_probe)
        with TqdmProgress("steps") as progress:
            result = adapt(args.data, args.out, models_dir=args.models, replay=args.replay, config=config,
                           progress=progress, log=progress.write)
    except (AdaptError, ModelFileError) as error:
        raise CommandError(str(error)) from error
    print(written_tree(result.out_dir))
    return 0
