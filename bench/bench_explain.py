"""Explanation speed: time per method per cell, and the ratio to captum's defaults in the same run.

Uses the shipped classifier (models/classifier/default, or --models DIR) when it is there, else a
freshly created model of the shipped architecture and input size (mobilenetv3_small_100, 64 px). The cell is a
real PBC neutrophil from ../shared/datasets when present, else a generated one.

Captum's defaults, on the same model and image: IntegratedGradients with n_steps=50 evaluated one
step at a time (internal_batch_size=1); Occlusion with a 16x16 window, stride 8, one perturbation
per forward pass. The source system took about 120 s per image.

    .venv/bin/python bench/bench_explain.py [--repeats 5] [--models DIR]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bloodcells.settings import apply_offline_environment, settings  # noqa: E402

SOURCE_SECONDS = 120.0  # the source system's time per image (Integrated Gradients / Occlusion)
TARGETS = {"gradcam": 0.1, "integrated-gradients": 1.5, "occlusion": 2.0}


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cell_image():
    from PIL import Image

    real = ROOT.parent / "shared" / "datasets" / "pbc" / "neutrophil"
    files = sorted(real.glob("SNE_*.jpg")) if real.is_dir() else []
    if files:
        return Image.open(files[0]).convert("RGB"), f"PBC {files[0].name}"
    from bloodcells.synthetic import cell_image as generated

    return generated("NGS", 0, 360), "generated NGS cell (../shared/datasets not found)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", type=Path, help="a trained classifier folder (default: the shipped one)")
    parser.add_argument("--size", type=int, default=64, help="input size of the fresh model when none is found")
    args = parser.parse_args()
    apply_offline_environment()
    import torch
    from captum.attr import IntegratedGradients, Occlusion

    from bloodcells.explain import METHODS, _private_copy, attribute, explain

    torch.set_num_threads(min(2, torch.get_num_threads()))
    image, image_name = cell_image()
    models_dir = args.models or settings().models_dir / "classifier" / "default"
    classifier = None
    if (models_dir / "classifier.json").is_file():
        from bloodcells.classify import TreeClassifier

        classifier = TreeClassifier.load(models_dir)
        node = classifier.nodes[classifier.tree.root.code]
        module, inputs = node.module, node.preprocess(image).unsqueeze(0)
        explained = _private_copy(node, classifier.lock).module
        what = f"{models_dir}: {node.architecture} node {node.code} at {node.input_size} px"
    else:
        import numpy as np

        from bloodcells.backbones import create_model
        from bloodcells.data import to_tensor

        module = create_model("mobilenetv3_small_100", 5).eval()
        inputs = to_tensor(np.asarray(image.resize((args.size, args.size)))[None], (0.485, 0.456, 0.406),
                           (0.229, 0.224, 0.225))
        explained = copy.deepcopy(module).requires_grad_(False)
        what = f"fresh mobilenetv3_small_100 at {args.size} px (no classifier in {models_dir})"
    with torch.no_grad():
        target = int(module(inputs).argmax())
    print(f"model: {what}; image: {image_name}; torch threads: {torch.get_num_threads()}; "
          f"median of {args.repeats} runs")

    ours = {name: timed(lambda name=name: attribute(explained, inputs, target, name), args.repeats) for name in METHODS}
    defaults = {
        "integrated-gradients": timed(lambda: IntegratedGradients(module).attribute(
            inputs, target=target, n_steps=50, internal_batch_size=1), max(1, args.repeats // 2)),
        "occlusion": timed(lambda: Occlusion(module).attribute(
            inputs, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), target=target,
            perturbations_per_eval=1), max(1, args.repeats // 2)),
    }
    _, delta_ours = IntegratedGradients(explained).attribute(inputs, target=target, n_steps=32, internal_batch_size=32,
                                                             return_convergence_delta=True)
    _, delta_default = IntegratedGradients(module).attribute(inputs, target=target, n_steps=50,
                                                             internal_batch_size=50, return_convergence_delta=True)
    print(f"integrated-gradients completeness error |sum - (f(x) - f(baseline))|: 32 steps {abs(float(delta_ours)):.4f}, "
          f"captum's default 50 steps {abs(float(delta_default)):.4f}")
    print(f"\n{'method':22s} {'one map (s)':>12s} {'target':>8s} {'captum defaults (s)':>20s} "
          f"{'speed-up':>9s} {'vs 120 s':>9s}")
    for name, seconds in ours.items():
        default = defaults.get(name)
        print(f"{name:22s} {seconds:12.3f} {TARGETS.get(name, float('nan')):8.2f} "
              f"{(f'{default:.3f}' if default else '-'):>20s} "
              f"{(f'{default / seconds:.1f}x' if default else '-'):>9s} {SOURCE_SECONDS / seconds:8.0f}x")

    if classifier is not None:
        print("\nwhole cell (every level of the predicted path, overlays included):")
        path = classifier.classify_images([image])[0].path
        for name in METHODS:
            seconds = timed(lambda name=name: explain(image, classifier, method=name), args.repeats)
            print(f"  {name:22s} {seconds:7.3f} s for {path}")
        from bloodcells.store import open_store

        with tempfile.TemporaryDirectory() as folder:
            store = open_store(f"sqlite:///{folder}/bench.db")
            explain(image, classifier, method="integrated-gradients", store=store)
            hit = timed(lambda: explain(image, classifier, method="integrated-gradients", store=store), args.repeats)
            store.engine.dispose()
        print(f"  cached integrated-gradients (SQLite store hit): {hit:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
