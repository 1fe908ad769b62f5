"""The cells a network trains on, batch by batch: as they are or augmented, made in this process or
in worker processes beside it.

Albumentations makes about 300 augmented 144 px cells a second on one CPU core: on a GPU the
network would wait for it. With ``workers``, worker processes make the batches while the network
trains. Each batch's random draws are seeded by the run's seed and the batch's key, so a run
gives the same cells whatever the number of workers (none included).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from ..data import augmentation


@dataclass(frozen=True)
class BatchRequest:
    key: tuple[int, ...]  # where the batch lies in the run (epoch, rank, first position): seeds its draws
    indices: np.ndarray  # dataset images, in batch order
    augment: np.ndarray | None = None  # per image, whether to make an augmented view (None: none)
    masks: bool = False  # also each cell's mask, as augmented with it


class CellMasks:
    """uint8 mask of each dataset image's centred stained cell, as ``PlainBackground`` keeps it;
    all zero when no single centred cell is found. Found once per image and kept bit-packed (an
    eighth of a byte a pixel): every epoch draws from the same images."""

    def __init__(self, images: np.ndarray):
        from ..background import centred_cell_mask

        self.images, self.shape, self.packed = images, images.shape[1:3], {}
        self.find = centred_cell_mask

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self.packed:
            mask = self.find(self.images[index])
            self.packed[index] = np.packbits(np.zeros(self.shape, bool) if mask is None else mask)
        return np.unpackbits(self.packed[index], count=self.shape[0] * self.shape[1]).reshape(self.shape)


class CellViews:
    """Batches of ``images`` (N x H x W x 3 uint8) as ``BatchRequest`` asks: ``views(request)`` in this
    process, ``views.map(requests)`` in order, ahead of use when ``workers`` > 0. ``with_masks``:
    cell masks are used (cell focus or a plain background); they are found once per image in each
    process. Close it (or use it as a context manager) to end the workers."""

    def __init__(self, images: np.ndarray, *, seed: int, cross_site: bool, plain_background: float,
                 with_masks: bool, workers: int = 0):
        self.images, self.seed, self.plain_background = images, seed, plain_background
        self.cross_site = cross_site
        self.cell_masks = CellMasks(images) if with_masks else None
        self._augment = None  # built on first use: albumentations is slow to import and often not needed
        self._pool = self._shared = None
        if workers > 0:
            # Fresh processes, not forks: a fork of a process whose OpenCV threads have run hangs at
            # its first OpenCV call. They read the decoded images from one shared-memory block.
            _check_shared_memory(images.nbytes)
            self._shared = shared_memory.SharedMemory(create=True, size=max(1, images.nbytes))
            np.ndarray(images.shape, images.dtype, buffer=self._shared.buf)[...] = images
            recipe = dict(seed=seed, cross_site=cross_site, plain_background=plain_background, with_masks=with_masks)
            try:
                self._pool = multiprocessing.get_context("spawn").Pool(
                    workers, initializer=_start_worker, initargs=(self._shared.name, images.shape, images.dtype.str,
                                                                  recipe))
            except BaseException:
                self.close()
                raise

    def __call__(self, request: BatchRequest) -> tuple[np.ndarray, np.ndarray | None]:
        images = self.images[request.indices]
        augmenting = request.augment is not None and bool(request.augment.any())
        needs_masks = request.masks or (augmenting and bool(self.plain_background))
        if needs_masks and self.cell_masks is None:
            raise ValueError("cell masks were asked for, but these views were made without them")
        cells = [self.cell_masks[i] for i in request.indices] if needs_masks else [None] * len(images)
        if augmenting:
            if self._augment is None:
                self._augment = augmentation(cross_site=self.cross_site, seed=self.seed,
                                             plain_background=self.plain_background)
            self._augment.set_random_seed(int(np.random.SeedSequence([self.seed, *request.key]).generate_state(1)[0]))
            views = [self._augment(image=image, **({} if cell is None else {"mask": cell})) if again
                     else {"image": image, "mask": cell}
                     for image, cell, again in zip(images, cells, request.augment, strict=True)]
            images = np.stack([view["image"] for view in views])
            cells = [view.get("mask") for view in views]
        return images, np.stack(cells) if request.masks else None

    def map(self, requests: Iterable[BatchRequest]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        if self._pool is None:
            return map(self, requests)
        return self._pool.imap(_worker_views, requests)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        if self._shared is not None:
            self._shared.close()
            self._shared.unlink()
            self._shared = None

    def __enter__(self) -> CellViews:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_shared_memory(needed: int, folder: str = "/dev/shm") -> None:
    """Refuse, with the figures, a block larger than the shared memory free (a container's /dev/shm
    is 64 MB unless it is given more): writing past it would kill the process with SIGBUS."""
    if os.path.isdir(folder) and (free := shutil.disk_usage(folder).free) < needed:
        raise ValueError(f"augmenting workers share the {needed / 2**20:.1f} MB of decoded cells through {folder}, "
                         f"which has {free / 2**20:.1f} MB free: train without --workers, or give it more "
                         "(docker run --shm-size, compose shm_size)")


_views: CellViews | None = None  # a worker's own views, over the shared images
_shared: shared_memory.SharedMemory | None = None  # kept open as long as the worker lives


def _start_worker(name: str, shape: tuple[int, ...], dtype: str, recipe: dict) -> None:
    global _views, _shared
    import cv2

    cv2.setNumThreads(1)  # one process a core: OpenCV's own threads would only contend
    _shared = shared_memory.SharedMemory(name=name)
    _views = CellViews(np.ndarray(shape, np.dtype(dtype), buffer=_shared.buf), **recipe)


def _worker_views(request: BatchRequest):
    return _views(request)
