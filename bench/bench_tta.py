"""Test-time augmentation: does averaging over flips (``classify --flips``) pay?

Scores the shipped tree on its recorded test split (``$DATASETS``, default ../shared/datasets)
as it is and with each cell averaged over its horizontal, vertical and double flips (cells have
no up or left), and prints accuracy and cells/s of both, measured in one run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bloodcells.settings import apply_offline_environment  # noqa: E402

apply_offline_environment()


def main() -> None:
    import numpy as np

    from bloodcells.classify import TreeClassifier
    from bloodcells.data import load_dataset
    from bloodcells.evaluate import _seen_digests

    datasets = Path(os.environ.get("DATASETS", ROOT.parent / "shared" / "datasets"))
    models = ROOT / "models" / "classifier" / "default"
    if not (datasets / "pbc").is_dir():
        print(f"skipped: {datasets} not found")
        return
    classifier = TreeClassifier.load(models)
    dataset = load_dataset([datasets / "pbc", datasets / "matek"], classifier.tree, classifier.input_size)
    seen = _seen_digests(models)
    test = [i for i in range(len(dataset)) if dataset.digests[i][:16] not in seen
            and classifier.tree[dataset.labels[i]].is_leaf]
    images, labels = dataset.images[test], [dataset.labels[i] for i in test]
    for name, flips in (("as shipped", False), ("4 flips averaged (--flips)", True)):
        started = time.perf_counter()
        results = classifier.classify_arrays(images, flips=flips)
        seconds = time.perf_counter() - started
        accuracy = np.mean([r.code == label for r, label in zip(results, labels, strict=True)])
        by_source = {source: np.mean([results[k].code == labels[k] for k, i in enumerate(test)
                                      if dataset.sources[i] == source]) for source in ("pbc", "matek")}
        print(f"{name}: leaf accuracy {accuracy:.3f} (pbc {by_source['pbc']:.3f}, matek {by_source['matek']:.3f}) "
              f"on {len(test)} unseen cells; tree {len(test) / seconds:.0f} cells/s")


if __name__ == "__main__":
    main()
