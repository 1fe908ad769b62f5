"""Classifying cells with the tree of per-node models.

On disk, a trained tree is a folder (default ``models/classifier/<tree>/``) holding
``classifier.json`` (the manifest: trained nodes, single-child nodes that always descend, the
calibrated review threshold, training configuration and data fingerprint), per trained node
``<code>.safetensors`` (weights) and ``<code>.json`` (architecture, input size, normalisation,
class codes in output order, the temperature of its probabilities, metrics with the per-epoch
history, sha256 of the weights), and
``split.json`` (sha256 of the held-out test images, so evaluation never scores seen cells).
``tree.yaml`` is the tree the models were trained for.

Inference descends the tree in batches: all images through the root's model, then each group
through its child's model, and so on. ``classify`` streams a folder or zip (memory stays flat:
results are spooled to a temporary file until they are stored in one transaction).

One module per concern: ``files`` (the folder of the tree in use; a model's files read and
verified), ``node`` (one inner node's model), ``classifier`` (``TreeClassifier``: the tree's models
loaded, cells classified down it) and ``uploads`` (``classify``: an upload classified and recorded,
its results and CSV).
"""

from .classifier import TRUNK_BATCH, CellResult, TreeClassifier, load_classifier
from .files import ModelFileError, default_models_dir, read_verified
from .node import NodeModel
from .uploads import TREE_VERSION, ClassificationResult, ClassifiedCell, classify

__all__ = ["TREE_VERSION", "TRUNK_BATCH", "CellResult", "ClassificationResult", "ClassifiedCell", "ModelFileError",
           "NodeModel", "TreeClassifier", "classify", "default_models_dir", "load_classifier", "read_verified"]
