"""Decoding image bytes into an upright 8-bit RGB image, whatever the file: EXIF rotation, palette,
transparency, CMYK, 16-bit and float images; damaged, truncated, tiny and oversized images are refused
with an ``InputError`` naming the file."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .items import InputError, InputProblem
from .names import IMAGES_ACCEPTED

MAX_IMAGE_PIXELS = 100_000_000  # 10k x 10k
# Pillow refuses more than twice its limit while opening (DecompressionBombError); open_image
# refuses everything above the limit itself, before decoding.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
MIN_IMAGE_SIDE = 16  # pixels: less shows no cell (a 1x1 image was typed "blast" and counted)
LATER_PAGES_UNREAD = "not read: only the first page of a multi-page file is analysed"  # the file itself was used
BLANK_SPREAD = 4.0  # grey levels (standard deviation at ~64 px a side): below it an image is one colour (blank_image)


def open_image(content: bytes, name: str = "image", at_least: int | None = None) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image, or raise InputError naming the file.

    Handles EXIF rotation, palette, grayscale, RGBA (composited on white), CMYK and 16-bit or
    float TIFFs (rescaled to 8 bits); refuses empty, truncated and damaged files and images of
    more than MAX_IMAGE_PIXELS pixels (checked from the header, before decoding). ``at_least``: the
    image will be shrunk to this size anyway, so a JPEG may be decoded at 1/2, 1/4 or 1/8 scale
    as long as both sides stay at least this long (Pillow's ``draft``: much less decoding work).
    """
    if not content:
        raise InputError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():  # past the limit: refused below, in the same words at any size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _pillow_open()(io.BytesIO(content))
    except Image.DecompressionBombError as error:  # past twice the limit: Pillow refuses it from the header
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        raise InputError(f"{name}: {pixels[1] + ' pixels is ' if pixels else ''}over the limit of "
                         f"{MAX_IMAGE_PIXELS} pixels") from error
    except (UnidentifiedImageError, ImportError) as error:  # ImportError: see _pillow_open
        raise InputError(f"{name}: not an image (the content is not in a format Pillow reads; "
                         f"{IMAGES_ACCEPTED})") from error
    except Exception as error:  # any decoder failure on user bytes is a damaged file, not a bug of ours
        raise InputError(f"{name}: damaged image ({type(error).__name__}: {error})") from error
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: {image.width}x{image.height} pixels is over the limit of "
                         f"{MAX_IMAGE_PIXELS} pixels")
    if min(image.size) < MIN_IMAGE_SIDE:
        raise InputError(f"{name}: {image.width}x{image.height} pixels is too small to show a cell "
                         f"(at least {MIN_IMAGE_SIDE} pixels a side)")
    try:
        sixteen_bit_colour = _sixteen_bit_colour(content, image)  # before load(), which empties image.tile
        if at_least and image.format == "JPEG":
            image.draft("RGB", (at_least, at_least))
        image.load()
        upright = ImageOps.exif_transpose(sixteen_bit_colour or image)
        rgb = to_rgb(upright)
    except Exception as error:  # as above: truncated data, bad EXIF, unsupported mode
        raise InputError(f"{name}: damaged or truncated image ({type(error).__name__}: {error})") from error
    rgb.info["pages"] = getattr(image, "n_frames", 1)
    rgb.info["palette"] = image.mode in ("P", "PA")  # at most 256 colours (a GIF): detection finds fewer cells
    return rgb


def blank_image(image: Image.Image, name: str) -> InputProblem | None:
    """The image as a problem to report when it is one colour throughout (a lamp-off or failed capture, a
    frame of background), else None: a black frame was typed "blast" and counted in the differential. All
    7,936 images of the shared PBC, Matek, BCCD and TXL-PBC data spread their grey levels by 11.6 or more (the
    standard deviation at about 64 pixels a side); BLANK_SPREAD leaves room for a dark frame's sensor noise."""
    from PIL import ImageStat

    small = image.reduce(max(1, min(image.size) // 64))  # box-averaged to about 64 px: 0.15 ms for a cell
    if ImageStat.Stat(small.convert("L")).stddev[0] >= BLANK_SPREAD:
        return None
    colour = ", ".join(str(round(c)) for c in ImageStat.Stat(small).mean[:3])
    return InputProblem(name, f"a blank image (one colour throughout, RGB {colour}): nothing to analyse; a failed "
                        "or lamp-off capture?")


def skipped_counts(problems, total: int | None = None) -> tuple[int, int]:
    """(files skipped, files whose later pages were not read) among an upload's ``problems`` (or their words);
    ``total``: how many there were, when ``problems`` are the first STORED_PROBLEMS of them."""
    pages = sum(LATER_PAGES_UNREAD in str(problem) for problem in problems)
    return (total or len(problems)) - pages, pages


def later_pages(image: Image.Image, name: str) -> InputProblem | None:
    """The pages of a multi-page TIFF or animated GIF after the first (``open_image`` reads only the
    first), as a problem to report: they are not analysed."""
    pages = image.info.get("pages", 1)
    if pages < 2:
        return None
    later = "page 2" if pages == 2 else f"pages 2-{pages}"
    return InputProblem(f"{name} ({later})", f"{LATER_PAGES_UNREAD}; save each page as an image of its own")


def _sixteen_bit_colour(content: bytes, image: Image.Image) -> Image.Image | None:
    """A colour PNG or TIFF of 16 bits a channel, scaled to 8 bits like 16-bit grayscale (None for any
    other image). Pillow keeps only each value's high byte, which leaves a 12-bit camera's image
    nearly black (and the cell typed a blast); OpenCV reads all 16 bits."""
    rawmode = image.tile[0].args if image.tile else ""
    rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
    if image.mode not in ("RGB", "RGBA") or ";16" not in str(rawmode):
        return None
    import cv2
    import numpy as np

    array = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 3:
        return None
    channels = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    rescaled = _eight_bit(channels[..., :3])
    if channels.shape[2] == 4:
        rescaled = np.dstack([rescaled, (channels[..., 3] >> 8).astype(np.uint8)])
    converted = Image.fromarray(rescaled)
    if "exif" in image.info:  # its orientation, for exif_transpose
        converted.info["exif"] = image.info["exif"]
    return converted


def _eight_bit(array):
    """An array of any depth as 8 bits, the same picture whatever the depth it was saved at.

    Whole numbers from 0 are scaled by the bit depth that holds them: the fewest of a camera's 8, 10, 12,
    14 or 16 bits that reach the highest value (a 12-bit camera writes 0..4095 into 16-bit files); floats
    from 0 to 1 by 255. Anything else (negative values, more than 16 bits, floats beyond 0..1) has no known
    scale, so its lowest finite value becomes black and its highest white. Every image was once stretched
    so: an 8-bit field saved at 16 bits had its colours shifted by 53 of 255 on average, and its white
    cell, a monocyte, became a segmented neutrophil."""
    import numpy as np

    integers = np.issubdtype(np.asarray(array).dtype, np.integer)  # a float image of 0.0 and 1.0 is 0..1
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    low, high = (float(array[finite].min()), float(array[finite].max())) if finite.any() else (0.0, 0.0)
    if low >= 0 and integers and high < 2 ** 16:
        low, high = 0.0, float(next(2 ** bits - 1 for bits in (8, 10, 12, 14, 16) if high < 2 ** bits))
    elif low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    return np.where(finite, np.round((array - low) / (high - low) * 255) if high > low else 0.0, 0.0).astype("uint8")


def open_any(image: Image.Image | bytes | str | Path, at_least: int | None = None) -> Image.Image:
    """An RGB image from a PIL image, image bytes or an image file's path (decoded by ``open_image``,
    ``at_least`` as there)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | Path):
        return open_image(Path(image).read_bytes(), str(image), at_least=at_least)
    return open_image(image, at_least=at_least)


def _pillow_open():
    """Pillow's own ``Image.open``.

    Importing ultralytics replaces ``PIL.Image.open`` with a wrapper that, for any file Pillow
    cannot identify, tries to install and import pi-heif (offline: ModuleNotFoundError, and a
    warning per file). The wrapper keeps Pillow's function as ``_image_open``; without it, the
    ImportError is read as "not an image" all the same.
    """
    opener = Image.open
    if getattr(opener, "__module__", Image.__name__) != Image.__name__:
        opener = getattr(opener, "__globals__", {}).get("_image_open", opener)
    return opener


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: high-bit-depth and float images are rescaled, transparency is put on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = Image.fromarray(_eight_bit(image))
    if image.has_transparency_data:
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def thumbnail_png(content: bytes, name: str = "image", size: int | None = None) -> bytes:
    """Image bytes as PNG, shrunk to fit ``size`` x ``size`` pixels when given (InputError if unreadable)."""
    image = open_image(content, name)
    if size:
        image.thumbnail((size, size))
    return png_bytes(image)


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
