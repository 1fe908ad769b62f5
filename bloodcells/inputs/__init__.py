"""Reading what users upload: single images, folders and zips, safely and one file at a time.

A problem with one file is reported (``InputProblem``) with its name and a plain reason, and the
rest of the batch goes on; a problem with the whole input (not a zip, empty, no images, too many
members) raises ``InputError`` naming it. Zips are streamed member by member and never
extracted: nothing is written to disk, and memory is bounded by ``InputLimits`` (the zip's index
and one member at a time) whatever the zip holds.

One module per concern: ``items`` (what reading yields, its errors and limits), ``names`` (image
names, noise files, unique names, paths on disk), ``sources`` (an input of any kind, read one file at
a time), ``zips`` (a zip's members checked and streamed) and ``decoding`` (image bytes to RGB).
"""

from .decoding import (
    LATER_PAGES_UNREAD,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    blank_image,
    later_pages,
    open_any,
    open_image,
    png_bytes,
    skipped_counts,
    thumbnail_png,
    to_rgb,
)
from .items import (
    STORED_PROBLEMS,
    InputError,
    InputImage,
    InputLimits,
    InputProblem,
    RepeatedImages,
    none_readable,
    stored_problems,
)
from .names import (
    ACCEPTED,
    DISK_NAME_BYTES,
    IMAGE_SUFFIXES,
    IMAGES_ACCEPTED,
    MAX_NAME_LENGTH,
    disk_path,
    is_image_name,
    is_noise,
    unique_names,
)
from .sources import check_source, count_images, iter_inputs

__all__ = ["ACCEPTED", "DISK_NAME_BYTES", "IMAGES_ACCEPTED", "IMAGE_SUFFIXES", "LATER_PAGES_UNREAD", "MAX_IMAGE_PIXELS", "MAX_NAME_LENGTH",
           "MIN_IMAGE_SIDE", "STORED_PROBLEMS", "InputError", "InputImage", "InputLimits", "InputProblem", "RepeatedImages", "blank_image", "check_source", "count_images",
           "disk_path", "is_image_name", "is_noise", "iter_inputs", "later_pages", "none_readable", "open_any", "open_image", "png_bytes",
           "skipped_counts", "stored_problems", "thumbnail_png", "to_rgb", "unique_names"]
