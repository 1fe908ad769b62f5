"""Training the tree: one timm classifier per inner node, on labelled cells.

``train_tree`` reads and decodes the data once, splits it 8/1/1 (the same split for every node,
so a test image is never trained on anywhere in the tree), prints the per-node count table,
trains every node that has at least two children with data (AdamW, cosine schedule, label
smoothing, early stopping on validation loss, best checkpoint kept), fits each node's
temperature and the review threshold on validation cells and writes the models with their
metadata (see ``classify`` for the format). Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from .config import FORMAT_VERSION, MODES, SHIPPED_RECIPE, EpochCallback, Progress, TrainConfig, TrainReport
from .files import network_sha256, register_models, review_threshold, save_node
from .network import NodeView, fit_network, labels_view, node_view, train_node
from .tree import calibrate_tree, fit_tree, train_tree

__all__ = ["FORMAT_VERSION", "MODES", "SHIPPED_RECIPE", "EpochCallback", "NodeView", "Progress", "TrainConfig", "TrainReport",
           "calibrate_tree", "fit_network", "fit_tree", "labels_view", "network_sha256", "node_view", "register_models",
           "review_threshold", "save_node", "train_node", "train_tree"]
