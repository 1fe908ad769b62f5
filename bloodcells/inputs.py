"""Reading what users upload: single images, folders and zips, safely and one file at a time.

Every problem is reported per file (``InputProblem``) with its name and a plain reason, and the
rest of the batch goes on. Zips are streamed member by member (memory does not grow with the
number of members), never extracted to disk, and bounded against zip bombs.
"""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
MAX_IMAGE_PIXELS = 100_000_000  # 10k x 10k; Pillow's bomb check raises above twice this
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ZipLimits:
    max_members: int = 200_000
    max_member_bytes: int = 256 * 1024 * 1024
    max_total_bytes: int = 8 * 1024 * 1024 * 1024
    max_ratio: float = 200.0  # uncompressed / compressed, per member


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


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def iter_inputs(source: str | Path | bytes, name: str | None = None,
                limits: ZipLimits = ZipLimits()) -> Iterator[InputImage | InputProblem]:
    """Yield every image (as bytes) or problem in an image file, a folder (recursive) or a zip.

    ``source`` may be a path or the uploaded bytes themselves (then ``name`` says what it was).
    """
    if isinstance(source, bytes | bytearray):
        label = name or "upload"
        if zipfile.is_zipfile(io.BytesIO(source)) or label.lower().endswith(".zip"):
            yield from _iter_zip(io.BytesIO(source), label, limits)
        else:
            yield InputImage(label, bytes(source))
        return
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        yield from _iter_folder(path)
    elif path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            yield from _iter_zip(handle, path.name, limits)
    elif is_image_name(path.name):
        yield InputImage(path.name, path.read_bytes())
    else:
        raise InputError(f"{path.name}: not an image, folder or .zip "
                         f"(accepted: {', '.join(sorted(IMAGE_SUFFIXES))}, .zip)")


def _iter_folder(root: Path) -> Iterator[InputImage | InputProblem]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            yield InputProblem(relative, "symbolic link skipped")
        elif path.is_file() and is_image_name(path.name):
            yield InputImage(relative, path.read_bytes())


def _iter_zip(handle, label: str, limits: ZipLimits) -> Iterator[InputImage | InputProblem]:
    try:
        archive = zipfile.ZipFile(handle)
    except zipfile.BadZipFile as error:
        raise InputError(f"{label}: not a readable zip file ({error})") from error
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_members:
            raise InputError(f"{label}: {len(members)} members is more than the limit of {limits.max_members}")
        images = 0
        total = 0
        for info in members:
            name = info.filename
            if info.is_dir():
                continue
            problem = _member_problem(info, limits)
            if problem is None and not is_image_name(name):
                problem = ("nested zip (not opened)" if name.lower().endswith(".zip")
                           else "not an image file (skipped)")
            if problem is None and total + info.file_size > limits.max_total_bytes:
                problem = f"total uncompressed size would exceed {limits.max_total_bytes} bytes"
            if problem is not None:
                if not _is_noise(name):
                    yield InputProblem(f"{label}/{name}", problem)
                continue
            try:
                content = _read_member(archive, info, limits)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError) as error:
                yield InputProblem(f"{label}/{name}", f"cannot be read from the zip ({error})")
                continue
            total += len(content)
            images += 1
            yield InputImage(name, content)
        if images == 0:
            raise InputError(f"{label}: the zip holds no images "
                             f"(accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")


def _member_problem(info: zipfile.ZipInfo, limits: ZipLimits) -> str | None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        return "unsafe path (absolute or '..'), skipped"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link, skipped"
    if info.flag_bits & 0x1:
        return "encrypted, cannot be read"
    if info.file_size > limits.max_member_bytes:
        return f"{info.file_size} bytes uncompressed is over the limit of {limits.max_member_bytes}"
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        return f"compression ratio {info.file_size / info.compress_size:.0f}:1 looks like a zip bomb"
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ZipLimits) -> bytes:
    """Read at most the declared size (+1 byte to catch a lying header)."""
    with archive.open(info) as member:
        content = member.read(min(info.file_size, limits.max_member_bytes) + 1)
    if len(content) > info.file_size:
        raise ValueError("member is larger than its header says")
    return content


def _is_noise(name: str) -> bool:
    """Files zip tools add by themselves (macOS resource forks, thumbnails)."""
    base = PurePosixPath(name).name
    return name.startswith("__MACOSX/") or base in {".DS_Store", "Thumbs.db", "desktop.ini"}


def open_image(content: bytes, name: str = "image") -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image, or raise InputError naming the file.

    Handles EXIF rotation, palette, grayscale, RGBA (composited on white), CMYK and 16-bit or
    float TIFFs (rescaled to 8 bits); refuses truncated files and decompression bombs.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(content))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(f"{name}: {image.width}x{image.height} pixels is over the limit of "
                                 f"{MAX_IMAGE_PIXELS} pixels")
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{name}: image too large ({error})") from error
    except UnidentifiedImageError as error:
        raise InputError(f"{name}: not a readable image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: damaged or truncated image ({error})") from error
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype("uint8"))
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")
