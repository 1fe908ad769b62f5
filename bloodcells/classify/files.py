"""A trained tree's model files: where the tree in use lies, and a model's metadata and weights read
only once the weights' sha256 matches the one the metadata records."""

from __future__ import annotations

import json
from pathlib import Path


class ModelFileError(RuntimeError):
    """A model file that is missing, altered or unreadable (the message names it)."""


def read_verified(metadata_file: Path) -> tuple[dict, Path, dict]:
    """A model's metadata, its weights file and their tensors, once the file's sha256 matches the
    metadata's (``weights_sha256`` for a head on a shared trunk, else ``sha256``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..store import sha256_file

    try:
        metadata = json.loads(metadata_file.read_text())
        weights = metadata_file.parent / metadata["weights"]
    except (OSError, ValueError, KeyError) as error:
        raise ModelFileError(f"{metadata_file}: unreadable model metadata ({error})") from error
    if not weights.is_file():
        raise ModelFileError(f"{weights}: model weights missing")
    if sha256_file(weights) != metadata.get("weights_sha256", metadata.get("sha256")):
        raise ModelFileError(f"{weights}: sha256 does not match {metadata_file.name} "
                             "(file altered or corrupt; retrain or restore it)")
    try:
        return metadata, weights, load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{weights}: unreadable weights ({error})") from error


def default_models_dir(tree_name: str | None = None) -> Path:
    """The folder of the tree in use: the version promoted last (see ``versions``), else the shipped one."""
    from ..versions import current_dir

    return current_dir(tree_name or "default")
