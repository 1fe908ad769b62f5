"""Adapting to a new site, measured: a tree trained on one source, adapted with K labelled cells
per type of the other, scored on that other source's cells it never saw (and on its own test split).

    python bench/adapt_cross_site.py [--base pbc=DIR --base matek=DIR] [--cells 15] [--epochs 6,0]
        [--lr 3e-4] [--layer-decay 1.0] [--probe on,off]

``--base SITE=DIR``: a tree trained on ``$DATASETS/SITE`` alone (default: ``.cache/adapt/SITE-only``
for pbc and matek, which ``make models-adapt-bases`` trains; ``make adapt-cross-site`` runs this). Each base is adapted to each other site (``bloodcells.adapt``, no hold-out: the
scoring cells are the other site's cells outside the K per type, at most ``--test-per-label``
per type) with each ``--epochs`` value (0: heads only). Prints accuracy before and after on the
new site and on the base's original test split, per class, and the minutes each adaptation took.
Each accuracy is given at leaf level and at the site's own classes (its folders: PBC's ``ig`` and
``neutrophil`` merge their sub-types, as a lab that labels at those classes would count).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bloodcells.settings import apply_offline_environment  # noqa: E402

apply_offline_environment()


def sample_lab_cells(site: Path, per_label: int, seed: int, out: Path) -> set[str]:
    """Copy ``per_label`` random files of each class folder of ``site`` to ``out``; their names."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chosen = set()
    for folder in sorted(p for p in site.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        (out / folder.name).mkdir(parents=True)
        for file in rng.permutation(files)[:per_label]:
            shutil.copy(file, out / folder.name / file.name)
            chosen.add(f"{folder.name}/{file.name}")
    return chosen


def site_classes(site: Path, tree) -> list[str]:
    """The tree nodes the site's class folders name (PBC's ``ig`` -> MYI): the classes it labels at."""
    return sorted({tree.resolve(folder.name).code for folder in site.iterdir() if folder.is_dir()})


def at_classes(scores, tree, at: list[str]):
    """``scores`` (leaf level) again with the cell types merged up to ``at``: no second classification."""
    from bloodcells.evaluate import Scores, merger

    merge, order = merger(tree, at), [node.code for node in tree.root.walk()]
    return Scores.of(f"at {','.join(at)}", [merge(c) for c in scores.truth], [merge(c) for c in scores.predicted],
                     order)


def main() -> None:
    import numpy as np

    from bloodcells.adapt import AdaptConfig, adapt
    from bloodcells.classify import TreeClassifier
    from bloodcells.data import load_dataset
    from bloodcells.evaluate import score

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", action="append", metavar="SITE=DIR")
    parser.add_argument("--sites", default="pbc,matek", help="the sources a base is adapted to (not its own)")
    parser.add_argument("--cells", type=int, default=15, help="labelled cells per type of the new site")
    parser.add_argument("--epochs", default="6", help="trunk epochs to compare, comma-separated (0: heads only)")
    parser.add_argument("--test-per-label", type=int, default=100)
    parser.add_argument("--lr", type=float, default=AdaptConfig.learning_rate, help="learning rate of the trunk")
    parser.add_argument("--layer-decay", type=float, default=AdaptConfig.layer_decay,
                        help="learning rate factor per layer down the trunk")
    parser.add_argument("--probe", default="off", help="linear probe before fine-tuning the trunk: on, off or on,off")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    datasets = Path(os.environ.get("DATASETS", ROOT.parent / "shared" / "datasets"))
    bases = dict(item.split("=", 1) for item in args.base or [f"{site}={ROOT / '.cache' / 'adapt' / site}-only"
                                                              for site in ("pbc", "matek")])
    sites = args.sites.split(",")
    if not all((datasets / site).is_dir() for site in {*bases, *sites}):
        print(f"skipped: {datasets} does not hold {', '.join(sorted({*bases, *sites}))}")
        return
    missing = [folder for folder in bases.values() if not (Path(folder) / "classifier.json").is_file()]
    if missing:
        print(f"skipped: no tree in {', '.join(missing)} (make models-adapt-bases trains them)")
        return
    rows = []
    for base_site, base_dir in bases.items():
        base = TreeClassifier.load(base_dir)
        for new_site in (s for s in sites if s != base_site):
            with tempfile.TemporaryDirectory() as scratch:
                lab = Path(scratch) / f"{new_site}-lab"
                chosen = sample_lab_cells(datasets / new_site, args.cells, args.seed, lab)
                cells = load_dataset([datasets / new_site], base.tree, base.input_size)
                rng = np.random.default_rng(args.seed)
                unseen = {}
                for i, name in enumerate(cells.names):
                    if f"{Path(name).parent.name}/{Path(name).name}" not in chosen:
                        unseen.setdefault(cells.labels[i], []).append(i)
                test = cells.subset(sorted(i for pool in unseen.values()
                                           for i in rng.permutation(pool)[:args.test_per_label]))
                at = site_classes(datasets / new_site, base.tree)
                home_at = site_classes(datasets / base_site, base.tree)
                before = score(base, test).tree
                recipes = [(epochs, probe == "on") for epochs in map(int, args.epochs.split(","))
                           for probe in args.probe.split(",") if epochs or probe == "on"]
                for epochs, probe in recipes:
                    started = time.perf_counter()
                    result = adapt(lab, Path(scratch) / f"adapted-{epochs}-{probe}", models_dir=base_dir,
                                   config=AdaptConfig(hold_out=0, epochs=epochs, learning_rate=args.lr,
                                                      layer_decay=args.layer_decay, seed=args.seed, linear_probe=probe),
                                   log=lambda _text: None)
                    minutes = (time.perf_counter() - started) / 60
                    after = score(TreeClassifier.load(result.out_dir), test).tree
                    before_site, after_site = (at_classes(scores, base.tree, at) for scores in (before, after))
                    home = [result.before["original"].tree, result.after["original"].tree]
                    home_site = [at_classes(scores, base.tree, home_at) for scores in home]
                    recipe = f"{epochs} (probe)" if probe and epochs else str(epochs)
                    rows.append((base_site, new_site, recipe, (before, before_site), (after, after_site),
                                 (home, home_site), minutes))
                    print(f"{base_site} -> {new_site}, {args.cells} cells/type, trunk epochs {epochs}, "
                          f"linear probe {'on' if probe else 'off'}: "
                          f"{new_site} {before.accuracy:.3f} -> {after.accuracy:.3f} (n={len(after.truth)}); "
                          f"{base_site} test {home[0].accuracy:.3f} -> {home[1].accuracy:.3f}; {minutes:.1f} min",
                          flush=True)
                    print(f"    at the sites' classes: {new_site} {before_site.accuracy:.3f} -> "
                          f"{after_site.accuracy:.3f}; {base_site} test {home_site[0].accuracy:.3f} -> "
                          f"{home_site[1].accuracy:.3f}")
                    print("    per class after: " + ", ".join(f"{c} {a:.2f}" for c, a in after.per_class.items()))
                    print("    per class before: " + ", ".join(f"{c} {a:.2f}" for c, a in before.per_class.items()),
                          flush=True)
    print("\nleaf level (and at the sites' own classes)")
    print("\n| trained on | adapted to | cells/type | trunk epochs | new site before | after | "
          "original site before | after | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for base_site, new_site, epochs, before, after, home, minutes in rows:
        figures = " | ".join(f"{leaf.accuracy:.3f} ({site.accuracy:.3f})"
                             for leaf, site in (before, after, *zip(*home, strict=True)))
        print(f"| {base_site} | {new_site} | {args.cells} | {epochs} | {figures} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
