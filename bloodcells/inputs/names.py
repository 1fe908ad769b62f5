"""Names and paths of the files in an upload: which are images, which are noise that zip tools and file
managers add, one name for each file, and where to write a file for a name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

# .jfif and .jpe are JPEGs under other names (Windows saves photos as .jfif); the content decides the format
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
NOT_AN_IMAGE = "not an image file"  # then IMAGES_ACCEPTED
MAX_NAME_LENGTH = 512  # the store keeps file names of up to 512 characters
DISK_NAME_BYTES = 200  # a file name written to disk (filesystems allow 255 bytes)
IMAGES_ACCEPTED = f"accepted: {', '.join(sorted(IMAGE_SUFFIXES))}"  # an image on its own, a zip's member
ACCEPTED = f"{IMAGES_ACCEPTED}, .zip"  # an upload or a command's input


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def is_noise(name: str) -> bool:
    """Files zip tools and file managers add by themselves: macOS resource forks (in ``__MACOSX/``,
    or ``._cell.png`` beside the image, as ditto, tar and FAT sticks leave them), thumbnails."""
    base = PurePosixPath(name).name
    return name.startswith("__MACOSX/") or base.startswith("._") or base in {".DS_Store", "Thumbs.db", "desktop.ini"}


def disk_path(name: str, suffix: str = "") -> PurePosixPath:
    """Where to write a file for ``name`` (an image's '/'-separated name in an upload) relative to a
    folder: ``suffix`` appended unless the name ends with it (``field01.jpg`` -> ``field01.jpg.png``,
    so that ``field01.png`` stays apart), each part shortened in its middle to DISK_NAME_BYTES bytes
    (filesystems refuse more than 255: a long accented name failed the whole upload)."""
    if suffix and not name.lower().endswith(suffix):
        name += suffix
    return PurePosixPath(*(_fitting(part) for part in PurePosixPath(name).parts))


def _fitting(part: str) -> str:
    if len(part.encode()) <= DISK_NAME_BYTES:
        return part
    suffix = PurePosixPath(part).suffix
    stem = part[: len(part) - len(suffix)]
    budget = DISK_NAME_BYTES - len(f"…{suffix}".encode())
    head, tail = stem[: len(stem) // 2], stem[len(stem) // 2:]
    while len(head.encode()) + len(tail.encode()) > budget:
        head, tail = (head[:-1], tail) if len(head) >= len(tail) else (head, tail[1:])
    return f"{head}…{tail}{suffix}"


def unique_names(names: Iterable[str]) -> list[str]:
    """``names`` with the second and later of one name renamed ``name (2).png``, ``name (3).png``...: each
    file is its own image (counted as one, a slide credited both fields' cells to each). A new name is
    never one that another file of the upload has: shown under it, one file's cells read as the other's."""
    names = list(names)
    taken, unique = set(names), []
    next_number: dict[str, int] = {}  # per name, the number its next copy tries first (200,000 copies of
    # one name, each counting up from 2, took hours)
    for name in names:
        if name not in next_number:
            next_number[name] = 2
            unique.append(name)
            continue
        suffix, n = PurePosixPath(name).suffix, next_number[name]
        while (renamed := f"{name.removesuffix(suffix)} ({n}){suffix}") in taken:
            n += 1
        next_number[name] = n + 1
        taken.add(renamed)
        unique.append(renamed)
    return unique
