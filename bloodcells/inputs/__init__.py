"""Reading what users upload: single images, folders and zips, safely and one file at a time.

A problem with one file is reported (``InputProblem``) with its name and a plain reason, and the
rest of the batch goes on; a problem with the whole input (not a zip, empty, no images, too many
members) raises ``InputError`` naming it. Zips are streamed member by member and never
extracted: nothing is written to disk, and memory is bounded by ``InputLimits`` (the zip's index
and one member at a time) whatever the zip holds.
"""

from __future__ import annotations

import io
import lzma
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
MAX_IMAGE_PIXELS = 100_000_000  # 10k x 10k
# Pillow refuses more than twice its limit while opening (DecompressionBombError); open_image
# refuses everything above the limit itself, before decoding.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
MIN_IMAGE_SIDE = 16  # pixels: less shows no cell (a 1x1 image was typed "blast" and counted)
MAX_NAME_LENGTH = 512  # the store keeps file names of up to 512 characters
DISK_NAME_BYTES = 200  # a file name written to disk (filesystems allow 255 bytes)
IMAGES_ACCEPTED = f"accepted: {', '.join(sorted(IMAGE_SUFFIXES))}"  # an image on its own, a zip's member
ACCEPTED = f"{IMAGES_ACCEPTED}, .zip"  # an upload or a command's input

# What reading a damaged zip member can raise besides BadZipFile (zlib/lzma errors are not OSErrors).
_MEMBER_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, zlib.error,
                  lzma.LZMAError, struct.error)


@dataclass(frozen=True)
class InputLimits:
    """Bounds against zip bombs and oversized files (see docs/operations.md)."""
    max_members: int = 200_000  # a Matek-sized (171k cells) export still fits
    max_index_bytes: int = 48 * 1024 * 1024  # the zip's central directory, held in memory
    max_file_bytes: int = 256 * 1024 * 1024  # one image, in a zip or on disk
    max_total_bytes: int = 8 * 1024 * 1024 * 1024  # all members of one zip, uncompressed
    max_ratio: float = 200.0  # uncompressed / compressed, per member ...
    ratio_floor_bytes: int = 1024 * 1024  # ... once it is larger than this (tiny members are harmless)


class InputError(ValueError):
    """A whole input that cannot be read (not a zip, empty, missing...)."""


@dataclass(frozen=True)
class InputImage:
    name: str  # path inside the upload, '/'-separated
    content: bytes


@dataclass(frozen=True)
class InputProblem:
    name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


def none_readable(label: str, problems: list[InputProblem]) -> InputError:
    """The error for an input none of whose images could be read, naming the first few and why."""
    shown = "; ".join(map(str, problems[:3])) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    images = "its one image" if len(problems) == 1 else f"none of its {len(problems)} images"
    return InputError(f"{label}: {images} could {'not ' if len(problems) == 1 else ''}be read ({shown})")


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


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def iter_inputs(source: str | Path | bytes, name: str | None = None,
                limits: InputLimits = InputLimits()) -> Iterator[InputImage | InputProblem]:
    """Yield every image (as bytes) or problem in an image file, a folder (recursive) or a zip.

    ``source`` may be a path or the uploaded bytes themselves (then ``name`` says what it was).
    Raises InputError for an input that holds no readable image at all.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "upload"
        content = bytes(source)
        if label.lower().endswith(".zip") or zipfile.is_zipfile(io.BytesIO(content)):
            yield from _iter_zip(io.BytesIO(content), label, limits)
        elif name is not None and not is_image_name(name):
            raise InputError(f"{label}: not an image or .zip ({ACCEPTED})")
        elif not content:
            raise InputError(f"{label}: the file is empty")
        else:
            yield InputImage(label, content)
        return
    check_source(source)
    path = Path(source)
    if path.is_dir():
        yield from _iter_folder(path, name or path.name or str(path), limits)
        return
    label = name or path.name
    if path.suffix.lower() == ".zip" or _is_zip_path(path):
        try:
            handle = path.open("rb")
        except OSError as error:
            raise InputError(f"{label}: cannot be opened ({error.strerror or error})") from error
        with handle:
            yield from _iter_zip(handle, label, limits)
    elif is_image_name(path.name):
        item = _read_file(path, label, limits)
        if isinstance(item, InputProblem):
            raise InputError(str(item))
        yield item
    else:
        raise InputError(f"{label}: not an image, folder or .zip ({ACCEPTED})")


def check_source(source: str | Path | bytes) -> None:
    """InputError when ``source`` is a path with nothing there (uploaded bytes are always there): said
    before an analysis is recorded, so that a mistyped path leaves no failed analysis behind."""
    if isinstance(source, str | Path) and not Path(source).exists():
        raise InputError(f"{source}: no such file or folder")


def count_images(source: str | Path | bytes, limits: InputLimits = InputLimits()) -> int | None:
    """How many images ``iter_inputs(source)`` will look at (names only, for progress bars), or None
    when that cannot be told cheaply; never raises (reading the source reports its problems)."""
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            handle = io.BytesIO(source)
        elif Path(source).is_dir():
            return sum(1 for p in Path(source).rglob("*") if p.is_file() and not p.is_symlink()
                       and is_image_name(p.name) and not _is_noise(p.relative_to(source).as_posix()))
        elif _is_zip_path(Path(source)):
            handle = Path(source).open("rb")  # noqa: SIM115 (closed by the with below)
        else:
            return 1 if Path(source).is_file() else None
        with handle:
            _check_zip_index(handle, "upload", limits)
            with zipfile.ZipFile(handle) as archive:
                return sum(1 for info in archive.infolist() if is_image_name(info.filename)
                           and not _is_noise(info.filename) and _member_problem(info, limits) is None)
    except (InputError, *_MEMBER_ERRORS, NotImplementedError):
        return None


def _is_zip_path(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _read_file(path: Path, name: str, limits: InputLimits) -> InputImage | InputProblem:
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            return InputProblem(name, f"{size} bytes is over the limit of {limits.max_file_bytes} bytes")
        if size == 0:
            return InputProblem(name, "the file is empty")
        return InputImage(name, path.read_bytes())
    except OSError as error:
        return InputProblem(name, f"cannot be read ({error.strerror or error})")


def _iter_folder(root: Path, label: str, limits: InputLimits) -> Iterator[InputImage | InputProblem]:
    """Every image under ``root`` (called ``label``); symbolic links are reported, never followed
    (nothing outside it is read)."""
    images, unreadable = 0, []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if _is_noise(relative):
            continue
        if path.is_symlink():
            yield InputProblem(relative, "symbolic link")
        elif not path.is_file():
            continue
        elif path.suffix.lower() == ".zip":
            yield InputProblem(relative, "zip inside a folder (not opened; upload it on its own)")
        elif is_image_name(path.name):
            item = _read_file(path, relative, limits)
            images += isinstance(item, InputImage)
            if isinstance(item, InputProblem):
                unreadable.append(item)
            yield item
    if images == 0:
        if unreadable:
            raise none_readable(label, unreadable)
        raise InputError(f"{label}: the folder holds no images ({ACCEPTED})")


def _iter_zip(handle, label: str, limits: InputLimits) -> Iterator[InputImage | InputProblem]:
    _check_zip_index(handle, label, limits)
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError) as error:
        raise InputError(f"{label}: not a readable zip file ({error})") from error
    with archive:
        members = [info for info in archive.infolist() if not info.filename.endswith("/")]  # not is_dir(): a name may be empty
        if len(members) > limits.max_members:
            raise InputError(f"{label}: {len(members)} files is more than the limit of {limits.max_members}")
        if not members:
            raise InputError(f"{label}: the zip is empty")
        images, total = 0, 0
        unreadable: list[InputProblem] = []
        zips: list[str] = []
        wanted = [info for info in members if not _is_noise(_member_name(info))]
        for info, name in zip(wanted, unique_names(_member_name(info) for info in wanted), strict=True):
            problem = _member_problem(info, limits)
            if problem is None and total + info.file_size > limits.max_total_bytes:
                problem = f"the zip's total uncompressed size would exceed {limits.max_total_bytes} bytes"
            if problem is None:
                try:
                    content = _read_member(archive, info, limits)
                except _MEMBER_ERRORS as error:
                    problem = f"cannot be read from the zip ({error or type(error).__name__})"
            if problem is not None:
                item = InputProblem(name, problem)  # named like the images: by its path inside the upload
                if is_image_name(name):
                    unreadable.append(item)
                elif name.lower().endswith(".zip"):
                    zips.append(name)
                yield item
                continue
            total += len(content)
            images += 1
            yield InputImage(name, content)
        if images == 0:
            if unreadable:
                raise none_readable(label, unreadable)
            if zips:
                raise InputError(f"{label}: it holds no images, only zips inside it ({', '.join(zips[:3])}"
                                 f"{', ...' if len(zips) > 3 else ''}), which are not opened: upload each on its own")
            raise InputError(f"{label}: it holds no images ({ACCEPTED})")


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's path inside the zip, '/'-separated (Windows' Compress-Archive writes NGS\\cell.png), or
    a name to report it under when it has none (zipfile ends a name at its first NUL byte)."""
    return info.filename.replace("\\", "/") or "(no name)"


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


def _check_zip_index(handle, label: str, limits: InputLimits) -> None:
    """Refuse a zip whose index is too large before zipfile reads it all into memory."""
    try:
        end_record = zipfile._EndRecData(handle)  # the record zipfile itself reads first
    except OSError:
        end_record = None
    if not end_record:
        raise InputError(f"{label}: not a zip file (no zip directory found; truncated or another format)")
    declared, index_bytes = end_record[zipfile._ECD_ENTRIES_TOTAL], end_record[zipfile._ECD_SIZE]
    if index_bytes > limits.max_index_bytes:
        raise InputError(f"{label}: its directory of {index_bytes} bytes is over the limit of "
                         f"{limits.max_index_bytes} bytes")
    # The end record's count can lie (one file declared, 800,000 listed: zipfile then built them all, 500 MB
    # and 20 s before the limit below was reached), so the entries are counted in the directory itself.
    directory_end = end_record[zipfile._ECD_LOCATION]
    if end_record[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        directory_end -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    handle.seek(max(directory_end - index_bytes, 0))
    listed = handle.read(index_bytes).count(zipfile.stringCentralDir)
    if max(declared, listed) > limits.max_members:
        raise InputError(f"{label}: {max(declared, listed)} files is more than the limit of {limits.max_members}")
    handle.seek(0)


def _member_problem(info: zipfile.ZipInfo, limits: InputLimits) -> str | None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        return "unsafe path (absolute or '..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if name.lower().endswith(".zip"):
        return "zip inside the zip (not opened; upload it on its own)"
    if not is_image_name(name):
        return f"not an image file ({IMAGES_ACCEPTED})"
    if any(ord(character) < 32 for character in name):
        return "name contains control characters"
    if len(name) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} characters"
    if info.flag_bits & 0x1:
        return "encrypted (password-protected), cannot be read"
    if info.file_size > limits.max_file_bytes:
        return f"{info.file_size} bytes uncompressed is over the limit of {limits.max_file_bytes} bytes"
    if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        return (f"compression ratio {info.file_size / max(info.compress_size, 1):.0f}:1 is over "
                f"{limits.max_ratio:.0f}:1 (looks like a zip bomb)")
    if info.file_size == 0:
        return "the file is empty"
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: InputLimits) -> bytes:
    """The member's bytes; zipfile stops at the declared size and checks the CRC at the end."""
    with archive.open(info) as member:
        content = member.read(min(info.file_size, limits.max_file_bytes) + 1)
    if len(content) > info.file_size:
        raise ValueError("member is larger than its header says")
    return content


def _is_noise(name: str) -> bool:
    """Files zip tools and file managers add by themselves: macOS resource forks (in ``__MACOSX/``,
    or ``._cell.png`` beside the image, as ditto, tar and FAT sticks leave them), thumbnails."""
    base = PurePosixPath(name).name
    return name.startswith("__MACOSX/") or base.startswith("._") or base in {".DS_Store", "Thumbs.db", "desktop.ini"}


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
    return rgb


def later_pages(image: Image.Image, name: str) -> InputProblem | None:
    """The pages of a multi-page TIFF or animated GIF after the first (``open_image`` reads only the
    first), as a problem to report: they are not analysed."""
    pages = image.info.get("pages", 1)
    if pages < 2:
        return None
    return InputProblem(f"{name} (pages 2-{pages})", "not read: only the first page of a multi-page file is "
                        "analysed; save each page as an image of its own")


def _sixteen_bit_colour(content: bytes, image: Image.Image) -> Image.Image | None:
    """A colour PNG or TIFF of 16 bits a channel, rescaled to 8 bits like 16-bit grayscale (None for any
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
    rescaled = _stretched(channels[..., :3])
    if channels.shape[2] == 4:
        rescaled = np.dstack([rescaled, (channels[..., 3] >> 8).astype(np.uint8)])
    converted = Image.fromarray(rescaled)
    if "exif" in image.info:  # its orientation, for exif_transpose
        converted.info["exif"] = image.info["exif"]
    return converted


def _stretched(array):
    """An array of any depth as 8 bits, its lowest finite value black and its highest white."""
    import numpy as np

    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    low, high = (float(array[finite].min()), float(array[finite].max())) if finite.any() else (0.0, 0.0)
    return np.where(finite, (array - low) / (high - low) * 255 if high > low else 0.0, 0.0).astype("uint8")


def open_any(image: Image.Image | bytes | str | Path) -> Image.Image:
    """An RGB image from a PIL image, image bytes or an image file's path (decoded by ``open_image``)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | Path):
        return open_image(Path(image).read_bytes(), str(image))
    return open_image(image)


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
        image = Image.fromarray(_stretched(image))
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
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
