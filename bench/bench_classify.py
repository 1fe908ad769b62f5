"""Classification speed and memory, measured in one run (prints figures and ratios).

1. cells per second for ``classify`` on a folder of real cells (``$DATASETS``, default
   ../shared/datasets, when present; generated cells otherwise);
2. the tree's time against one flat model of the same backbone over all leaves, same images,
   and the shared trunk frozen by TorchScript (as ``classify`` runs it) against the eager module;
3. peak memory (max RSS of a fresh process) classifying a generated zip of 10,000 cells against
   one of 1,000, with the analysis stored in a SQLite database: it must be flat (ratio near 1).

Uses the shipped models (models/classifier/default) when present, else trains a tiny tree.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bloodcells.settings import apply_offline_environment  # noqa: E402

apply_offline_environment()


def real_cells_folder(target: Path, count: int = 600) -> tuple[Path, str]:
    datasets = Path(os.environ.get("DATASETS", ROOT.parent / "shared" / "datasets"))
    files = sorted(p for name in ("pbc", "matek") for p in (datasets / name).rglob("*.jpg")) \
        if datasets.is_dir() else []
    if files:
        for path in random.Random(0).sample(files, min(count, len(files))):
            destination = target / path.parent.name / path.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
        return target, f"real cells from {datasets}"
    from bloodcells.synthetic import write_cell_folders

    write_cell_folders(target, {code: count // 6 for code in ("LYT", "EOS", "MON", "NGS", "NGB", "BLA")})
    return target, f"generated cells ({datasets} not found)"


def models_dir(scratch: Path) -> tuple[Path, str]:
    shipped = ROOT / "models" / "classifier" / "default"
    if (shipped / "classifier.json").is_file():
        return shipped, "shipped models"
    from bloodcells.synthetic import write_cell_folders
    from bloodcells.train import TrainConfig, train_tree

    write_cell_folders(scratch / "train", {code: 30 for code in ("LYT", "EOS", "MON", "NGS", "NGB", "BLA")})
    train_tree([scratch / "train"], scratch / "models", log=lambda _text: None,
               config=TrainConfig(architecture="mobilenetv3_small_100", input_size=64, epochs=1, per_class=16,
                                  mode="scratch"))
    return scratch / "models", "a tiny tree trained on generated cells (no shipped models)"


def tree_against_flat(classifier, images, repeats: int = 3) -> tuple[float, float]:
    """Seconds for the tree and for one flat model over all leaves (same backbone and input size:
    for a tree of heads on a shared trunk, the trunk with one head over all leaves)."""
    from torch import nn

    from bloodcells.backbones import create_model
    from bloodcells.classify import TRUNK_BATCH, NodeModel
    from bloodcells.heads import frozen_for_inference, pooled_width, trunk_with_head

    root = classifier.nodes[classifier.tree.root.code]
    leaves = [leaf.code for leaf in classifier.tree.leaves()]
    network = trunk_with_head(frozen_for_inference(root.trunk, root.input_size),  # as the tree runs it
                              nn.Linear(pooled_width(root.trunk), len(leaves))) \
        if root.trunk is not None else create_model(root.architecture, len(leaves), img_size=root.input_size)
    flat = NodeModel("flat", {**root.metadata, "classes": leaves}, network.eval(), root.path)
    batch_size = TRUNK_BATCH if root.trunk is not None else 64
    tree_seconds, flat_seconds = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        classifier.classify_images(images)
        tree_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        flat.probabilities(images, batch_size)
        flat_seconds.append(time.perf_counter() - started)
    return min(tree_seconds), min(flat_seconds)


def frozen_against_eager(classifier, images, repeats: int = 3) -> tuple[float, float] | None:
    """Seconds for the shared trunk's features of ``images``, frozen by TorchScript and eager
    (None for a tree without a shared trunk)."""
    from bloodcells.classify import TRUNK_BATCH
    from bloodcells.heads import features, frozen_for_inference

    root = classifier.nodes[classifier.tree.root.code]
    if root.trunk is None:
        return None
    arrays = root.prepare(images)
    frozen = frozen_for_inference(root.trunk, root.input_size)
    seconds = {}
    for name, trunk in (("frozen", frozen), ("eager", root.trunk)):
        features(trunk, arrays[:TRUNK_BATCH], root.mean, root.std, root.stain_norm, TRUNK_BATCH)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            features(trunk, arrays, root.mean, root.std, root.stain_norm, TRUNK_BATCH)
            times.append(time.perf_counter() - started)
        seconds[name] = min(times)
    return seconds["frozen"], seconds["eager"]


def peak_memory_child(upload: str, models: str, database: str) -> None:
    from bloodcells.classify import classify, load_classifier
    from bloodcells.store import open_store

    outcome = classify(upload, classifier=load_classifier(models), store=open_store(f"sqlite:///{database}"))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{len(outcome.rows)} {peak_kib}")


def peak_memory(count: int, models: Path, scratch: Path) -> tuple[int, float]:
    from bloodcells.synthetic import write_cell_zip

    codes = ("LYT", "EOS", "MON", "NGS", "NGB", "BLA", "PMO", "BAS")
    upload = write_cell_zip(scratch / f"cells_{count}.zip", {code: count // len(codes) for code in codes},
                            size=64, fmt="JPEG")
    run = subprocess.run([sys.executable, __file__, "--peak", str(upload), str(models),
                          str(scratch / f"store_{count}.db")], capture_output=True, text=True, check=True)
    cells, peak_kib = map(int, run.stdout.split()[-2:])
    return cells, peak_kib / 1024


def main() -> None:
    from bloodcells.classify import classify, load_classifier

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        models, models_note = models_dir(scratch)
        cells, cells_note = real_cells_folder(scratch / "cells")
        classifier = load_classifier(models)
        print(f"models: {models_note} ({', '.join(f'{c}: {n.architecture} {n.input_size}px' for c, n in classifier.nodes.items())})")
        print(f"cells: {cells_note}")
        classify(cells, classifier=classifier)  # warm-up: first-call costs are not throughput
        started = time.perf_counter()
        outcome = classify(cells, classifier=classifier)
        seconds = time.perf_counter() - started
        print(f"classify (read + decode + tree, no database): {len(outcome.rows)} cells in {seconds:.2f} s "
              f"= {len(outcome.rows) / seconds:.0f} cells/s")

        from bloodcells.inputs import iter_inputs, open_image

        images = [open_image(item.content, item.name) for item in iter_inputs(cells)]
        tree_s, flat_s = tree_against_flat(classifier, images)
        print(f"tree of {len(classifier.nodes)} models: {len(images) / tree_s:.0f} cells/s; one flat model over "
              f"all {len(classifier.tree.leaves())} leaves: {len(images) / flat_s:.0f} cells/s; "
              f"time ratio tree/flat = {tree_s / flat_s:.2f}")
        trunk_times = frozen_against_eager(classifier, images)
        if trunk_times:
            frozen_s, eager_s = trunk_times
            print(f"shared trunk alone: frozen (TorchScript) {len(images) / frozen_s:.0f} cells/s, eager "
                  f"{len(images) / eager_s:.0f} cells/s; speed-up {eager_s / frozen_s:.2f}x")

        small_cells, small_mib = peak_memory(1_000, models, scratch)
        large_cells, large_mib = peak_memory(10_000, models, scratch)
        print(f"peak memory classifying a zip of {small_cells} cells: {small_mib:.0f} MiB; of {large_cells} cells: "
              f"{large_mib:.0f} MiB; ratio 10k/1k = {large_mib / small_mib:.2f} (flat is ~1)")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--peak":
        peak_memory_child(*sys.argv[2:])
    else:
        main()
