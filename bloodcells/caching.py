"""Model files loaded once per process and version, so that every caller shares one loaded model.

A version is the modification time of the file that retraining rewrites last (a classifier's
``classifier.json``, an attribute head's ``attributes.json``): the first call after retraining
loads the new version. Only the few most recently used versions are kept, so stale ones are
dropped instead of piling up in a long-running server.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

Loaded = TypeVar("Loaded")

VERSIONS_KEPT = 8  # a server uses two or three models at a time; the rest are stale versions


def load_version(load: Callable[[Path], Loaded], path: str | Path, version_file: str | Path) -> Loaded:
    """``load(path)`` (``path`` resolved), once per modification time of ``version_file``.

    A load that raises is not kept: a broken file is read again once fixed. Two threads that miss
    at once both load; each gets a complete model (the app's models are read-only and carry their
    own locks) and later calls get the one that was kept.
    """
    version_file = Path(version_file)
    modified = version_file.stat().st_mtime_ns if version_file.is_file() else 0
    return _load(load, Path(path).resolve(), modified)


@lru_cache(maxsize=VERSIONS_KEPT)
def _load(load: Callable[[Path], Loaded], path: Path, _modified_ns: int) -> Loaded:
    return load(path)
