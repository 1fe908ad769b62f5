"""bloodcells: find, count, classify and explain blood and bone-marrow cells.

The public API is small and imported lazily (torch and ultralytics load only when used)::

    from bloodcells import default_tree, open_store
    tree = default_tree()
    tree.resolve("BNE").code  # 'NGB'
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Tree": "taxonomy", "Node": "taxonomy", "load_tree": "taxonomy", "default_tree": "taxonomy",
    "UnknownLabelError": "taxonomy",
    "Store": "store", "StoreError": "store", "open_store": "store",
    "iter_inputs": "inputs", "open_image": "inputs", "InputError": "inputs",
    "settings": "settings",
    "create_model": "backbones", "TreeClassifier": "classify", "load_classifier": "classify",
    "CellResult": "classify", "ModelFileError": "classify",
    "train_tree": "train", "TrainConfig": "train",
    # explain() itself: ``from bloodcells.explain import explain`` (the submodule shares its name)
    "METHODS": "explain", "predict_attributes": "morphology",
    "detect": "detection", "Detector": "detection", "DetectionResult": "detection", "DetectedBox": "detection",
    "annotate": "detection", "train_detector": "detection", "evaluate_detector": "detection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bloodcells' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bloodcells.{module}"), name)
