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

MIN_CELL_SHARE, MAX_CELL_SHARE = 0.01, 0.6  # outside this, the mask found is not one centred cell


def stained_cell_mask(image: np.ndarray, grow: float = 1 / 28) -> np.ndarray:
    """The stained white cell of a May-Grünwald-Giemsa image (uint8 RGB): purple (blue over green)
    and darker than the background, grown by ``grow`` of the image's side to take in the
    cytoplasm's rim, the connected part at the centre. On a lilac background (many bone-marrow
    images) purple is everywhere: the mask then covers most of the image."""
    rgb = image.astype(float)
    purple = (rgb[..., 2] - rgb[..., 1] > 25) & (rgb.mean(-1) < 200)
    grown = ndimage.binary_dilation(purple, iterations=max(1, int(image.shape[0] * grow)))
    labelled, count = ndimage.label(grown)
    if not count:
        return grown
    h, w = image.shape[:2]
    centre = labelled[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    keep = np.bincount(centre[centre > 0].ravel(), minlength=count + 1).argmax()
    return labelled == keep if keep else np.zeros_like(grown)


def centred_cell_mask(image: np.ndarray, grow: float = 1 / 16) -> np.ndarray | None:
    """``stained_cell_mask`` where it is one centred cell (its share of the image in range), else None."""
    mask = stained_cell_mask(image, grow=grow)
    return mask if MIN_CELL_SHARE < mask.mean() < MAX_CELL_SHARE else None


class PlainBackground(A.ImageOnlyTransform):
    """Everything but the centred stained cell (grown by a sixteenth of the side, to keep pale
    cytoplasm) becomes the median colour of what it replaces, with a little noise; the edge is
    blended over a few pixels. Images where no single centred cell is found are left as they are."""

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        mask = centred_cell_mask(img)
        if mask is None:
            return img
        keep = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=max(1.0, img.shape[0] / 64))[..., None]
        field = np.median(img[~mask], axis=0) + self.random_generator.normal(0, 3, img.shape)
        return (img * keep + field * (1 - keep)).clip(0, 255).astype(np.uint8)
