"""The stained white cell at the centre of a cell image, and an augmentation that hides what lies around it.

Why: trained on whole frames, a classifier also learns the red cells and the background around
the white cell (they tell a lab's slides, and so its class mix, apart), and Grad-CAM showed the
shipped tree drawing on them. ``PlainBackground`` replaces, in some training images, everything
but the centred cell with a plain field of the image's own background colour, so the cell alone
must carry the answer. Imported only by ``data.augmentation``: albumentations is slow to import.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
from scipy import ndimage

MIN_CELL_SHARE, MAX_CELL_SHARE = 0.01, 0.85  # outside this, the mask found is not one centred cell
MIN_PURPLE = 25  # blue over green that is stain, not a white background's tint
WORK_SIDE = 72  # pixels: masks are found at this size and scaled up


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def stained_cell_mask(image: np.ndarray, grow: float = 1 / 28) -> np.ndarray:
    """The stained white cell at the centre of a May-Grünwald-Giemsa image (uint8 RGB), grown by
    ``grow`` of the image's side to take in the cytoplasm's rim.

    Stain is purple: blue over green by more than the image's own Otsu threshold (a bone-marrow
    image's lilac background is purple too, only less). Close gaps between a nucleus's lobes and
    fill the blob; cells that touch (bone-marrow images are crowded) are parted where they meet,
    one per cell-sized peak of the distance to the blob's edge. The cell kept is the one covering
    most of the image's centre."""
    full = image.shape[:2]
    if max(full) > WORK_SIDE:  # the shape is all that is wanted: find it on a smaller copy, 4x faster
        small = cv2.resize(image, (round(full[1] * WORK_SIDE / max(full)), round(full[0] * WORK_SIDE / max(full))),
                           interpolation=cv2.INTER_AREA)
        mask = stained_cell_mask(small, grow).astype(np.uint8)
        return cv2.resize(mask, full[::-1], interpolation=cv2.INTER_LINEAR).astype(bool)
    h, w = full
    rgb = image.astype(np.int16)
    blue_excess = np.clip(rgb[..., 2] - rgb[..., 1], 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(blue_excess, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    purple = (blue_excess > max(MIN_PURPLE, otsu)) & (rgb.sum(-1) < 600)
    blob = cv2.morphologyEx(purple.astype(np.uint8), cv2.MORPH_CLOSE, _disc(max(1, h // 28)))
    blob = cv2.morphologyEx(ndimage.binary_fill_holes(blob).astype(np.uint8), cv2.MORPH_OPEN, _disc(2))
    if not blob.any():
        return blob.astype(bool)
    distance = cv2.distanceTransform(blob, cv2.DIST_L2, 5)
    peaks = (distance == ndimage.maximum_filter(distance, size=max(3, h // 5))) & (distance >= 0.4 * distance.max())
    seeds, count = ndimage.label(peaks)
    centres = np.asarray(ndimage.center_of_mass(peaks, seeds, range(1, count + 1)))
    radii = ndimage.maximum(distance, seeds, range(1, count + 1))
    # each pixel goes to the cell whose rim is nearest (distance to its centre less its radius):
    # touching round cells part where they meet
    yy, xx = np.mgrid[:h, :w]
    reach = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
    nearest = (reach - np.asarray(radii)[:, None, None]).argmin(0)
    regions = np.where(blob > 0, 1 + _same_cell(distance, centres, radii)[nearest], 0)
    keep = _most_central(regions)
    if not keep:
        return np.zeros((h, w), bool)
    pieces, _ = ndimage.label(regions == keep)
    cell = pieces == _most_central(pieces)  # the part of its region that reaches the centre
    return cv2.dilate(cell.astype(np.uint8), _disc(max(1, int(np.ceil(h * grow))))).astype(bool)


def _same_cell(distance: np.ndarray, centres: np.ndarray, radii, neck: float = 0.6) -> np.ndarray:
    """One cell id per peak: two peaks are one cell unless the blob narrows between them to under
    ``neck`` of the smaller one's radius (a lobed or oblong cell has two peaks and no waist)."""
    group = np.arange(len(centres))
    for i, j in zip(*np.triu_indices(len(centres), 1), strict=True):
        line = np.linspace(centres[i], centres[j], 24).round().astype(int)
        if distance[line[:, 0], line[:, 1]].min() >= neck * min(radii[i], radii[j]):
            group[group == group[j]] = group[i]
    return group


def _most_central(labels: np.ndarray) -> int:
    """The label (not 0) covering most of the image's middle quarter of each side; 0 if none."""
    h, w = labels.shape
    middle = labels[3 * h // 8: 5 * h // 8, 3 * w // 8: 5 * w // 8]
    return int(np.bincount(middle[middle > 0].ravel(), minlength=1).argmax())


def centred_cell_mask(image: np.ndarray, grow: float = 1 / 16) -> np.ndarray | None:
    """``stained_cell_mask`` where it is one centred cell (its share of the image in range), else None."""
    mask = stained_cell_mask(image, grow=grow)
    return mask if MIN_CELL_SHARE < mask.mean() < MAX_CELL_SHARE else None


class PlainBackground(A.ImageOnlyTransform):
    """Everything but the centred stained cell (grown by a sixteenth of the side, to keep pale
    cytoplasm) becomes the median colour of what it replaces, with a little noise; the edge is
    blended over a few pixels. Images where no single centred cell is found are left as they are.
    A ``mask`` passed along with the image (training's cell masks, found once per image) is taken
    as that cell, all zero meaning none, rather than found again."""

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"cell": data.get("mask")}

    def apply(self, img: np.ndarray, cell: np.ndarray | None = None, **params) -> np.ndarray:
        mask = centred_cell_mask(img) if cell is None else cell.astype(bool) if cell.any() else None
        if mask is None:
            return img
        keep = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=max(1.0, img.shape[0] / 64))[..., None]
        field = np.median(img[~mask], axis=0) + self.random_generator.normal(0, 3, img.shape)
        return (img * keep + field * (1 - keep)).clip(0, 255).astype(np.uint8)
