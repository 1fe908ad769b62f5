"""Large images: tiles overlapping by more than a cell, and their boxes merged so each cell counts once."""

from __future__ import annotations

from dataclasses import dataclass

from .boxes import DetectedBox


@dataclass(frozen=True)
class Tile:
    x: int
    y: int
    width: int
    height: int


def plan_tiles(width: int, height: int, tile_size: int, overlap: int) -> list[Tile]:
    """Tiles of ``tile_size`` covering the image, neighbours sharing ``overlap`` pixels.

    An image no larger than one tile (in both directions) is one tile.
    """
    if overlap >= tile_size:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile_size}")

    def starts(length: int) -> list[int]:
        if length <= tile_size:
            return [0]
        step = tile_size - overlap
        count = -(-(length - tile_size) // step) + 1
        # spread the tiles evenly so the last one ends exactly at the border
        return [round(i * (length - tile_size) / (count - 1)) for i in range(count)]

    return [Tile(x, y, min(tile_size, width), min(tile_size, height))
            for y in starts(height) for x in starts(width)]


def merge_tiles(per_tile: list[list[DetectedBox]], tiles: list[Tile], width: int, height: int,
                edge: float = 3.0, iou: float = 0.5) -> list[DetectedBox]:
    """Boxes of all tiles (already in image coordinates) with each cell counted once.

    A box touching an inner tile edge is a cell cut by the tile; it is dropped when a box of
    the same class from another tile covers at least half of it and is whole or larger (that
    tile saw more of the cell). Whole cells inside an overlap are found twice; the less confident copy goes.
    """
    import numpy as np

    boxes = [box for tile_boxes in per_tile for box in tile_boxes]
    if not boxes:
        return []
    tile_of = np.array([index for index, tile_boxes in enumerate(per_tile) for _ in tile_boxes])
    xyxy = np.array([box.xyxy for box in boxes], dtype=float)
    classes = np.array([box.class_code for box in boxes])
    confidence = np.array([box.confidence for box in boxes])
    bounds = np.array([(t.x, t.y, t.x + t.width, t.y + t.height) for t in tiles], dtype=float)[tile_of]
    inner = bounds > 0
    inner[:, 2:] = bounds[:, 2:] < (width, height)
    cut = (inner & np.concatenate([xyxy[:, :2] <= bounds[:, :2] + edge, xyxy[:, 2:] >= bounds[:, 2:] - edge],
                                  axis=1)).any(axis=1)
    area = (xyxy[:, 2] - xyxy[:, 0]).clip(0) * (xyxy[:, 3] - xyxy[:, 1]).clip(0)

    def intersection(i: int, others: np.ndarray) -> np.ndarray:
        low = np.maximum(xyxy[others, :2], xyxy[i, :2])
        high = np.minimum(xyxy[others, 2:], xyxy[i, 2:])
        return (high - low).clip(0).prod(axis=1)

    keep = ~cut
    for i in np.flatnonzero(cut):  # vectorised over the other boxes: tiled fields hold thousands
        better = np.flatnonzero((classes == classes[i]) & (tile_of != tile_of[i]) & (~cut | (area > area[i])))
        keep[i] = not (intersection(i, better) >= 0.5 * area[i]).any()
    order = sorted(np.flatnonzero(keep), key=lambda i: (cut[i], -confidence[i]))  # whole, most confident first
    taken = np.zeros(len(boxes), bool)
    for i in order:
        rivals = np.flatnonzero(taken & (classes == classes[i]) & (tile_of != tile_of[i]))
        overlap = intersection(i, rivals)
        if not (overlap / (area[rivals] + area[i] - overlap).clip(1e-9) > iou).any():
            taken[i] = True
    return [boxes[i] for i in np.flatnonzero(taken)]

