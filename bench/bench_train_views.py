"""Augmenting workers (``bloodcells train --workers N``), measured on this machine in one run.

    python bench/bench_train_views.py [--cells 1024] [--workers 0,1,2]

1. Batch making alone: the shipped recipe's augmented 144 px batches (stain, scale, blur and colour
   changes, half on a plain background, with the cell masks that cell focus reads), cells/s for
   each number of workers, once they have started, and its ratio to making them in the training
   process (0).
2. One epoch of the shipped trunk (EfficientNet-Lite0, 144 px, a small balanced sample) with 0 and
   with 1 worker, the worker's start included: on a CPU the network and the workers share the
   cores, so this says whether ``--workers`` pays here. On a GPU the network leaves the cores to
   the workers.

Cells: ../shared/datasets/pbc and matek when present (BLOODCELLS_DATASETS), else generated cells.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bloodcells.settings import apply_offline_environment  # noqa: E402

apply_offline_environment()
SIZE = 144


def cell_sources(scratch: Path) -> list[Path]:
    datasets = Path(os.environ.get("BLOODCELLS_DATASETS", ROOT.parent / "shared" / "datasets"))
    if (datasets / "pbc").is_dir() and (datasets / "matek").is_dir():
        print(f"cells: {datasets}/pbc and matek")
        return [datasets / "pbc", datasets / "matek"]
    from bloodcells.synthetic import write_cell_folders

    print(f"cells: generated ({datasets} is not here)")
    write_cell_folders(scratch / "cells", {code: 60 for code in ("LYT", "NGS", "EOS", "MON", "BAS", "BLA")}, size=SIZE)
    return [scratch / "cells"]


def batch_making(images, cells: int, workers: list[int]) -> None:
    import numpy as np

    from bloodcells.train.views import BatchRequest, CellViews

    rng = np.random.default_rng(0)
    order = rng.choice(len(images), size=cells, replace=cells > len(images))
    requests = [BatchRequest((1, start), order[start:start + 32], np.ones(len(order[start:start + 32]), bool), masks=True)
                for start in range(0, cells, 32)]
    print(f"\n1. {cells} augmented {SIZE} px cells with their masks, batches of 32")
    alone = None
    for count in workers:
        with CellViews(images, seed=0, cross_site=True, plain_background=0.5, with_masks=True,
                       workers=count) as views:
            list(views.map(requests[:max(1, count)]))  # the workers' start (imports) is not what is timed
            started = time.perf_counter()
            for _ in views.map(requests):
                pass
            rate = cells / (time.perf_counter() - started)
        alone = alone or rate
        print(f"   workers {count}: {rate:7.0f} cells/s   ratio to 0 workers {rate / alone:.2f}")


def one_epoch(sources: list[Path], scratch: Path, workers: int) -> float:
    from bloodcells.train import TrainConfig, train_tree

    seconds = []
    config = TrainConfig(architecture="efficientnet_lite0", input_size=SIZE, mode="pretrained+aug",
                         shared_trunk=True, epochs=1, per_class=24, batch_size=32, learning_rate=1e-3,
                         stain_norm=False, plain_background=0.5, cell_focus=1.0, head_views=1,
                         workers=workers)
    train_tree(sources, scratch / f"epoch-{workers}", config=config, log=lambda _text: None,
               on_epoch=lambda name, record: seconds.append(record["seconds"]) if name == "trunk" else None)
    return seconds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1024)
    parser.add_argument("--workers", default="0,1,2")
    args = parser.parse_args()
    import torch

    from bloodcells.data import load_dataset
    from bloodcells.taxonomy import default_tree

    print(f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        sources = cell_sources(scratch)
        images = load_dataset(sources, default_tree(), SIZE).images
        batch_making(images, args.cells, [int(n) for n in args.workers.split(",")])
        print("\n2. one trunk epoch of the shipped recipe (24 cells per type), EfficientNet-Lite0 on the CPU")
        in_turn = one_epoch(sources, scratch, 0)
        beside = one_epoch(sources, scratch, 1)
        print(f"   workers 0: {in_turn:.1f} s   workers 1: {beside:.1f} s   ratio {beside / in_turn:.2f}")


if __name__ == "__main__":
    main()
