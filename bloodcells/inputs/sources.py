"""What an input is (uploaded bytes, an image file, a folder or a zip) and its images read one at a time;
a folder is walked without following links, a zip is read by ``zips``."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .items import InputError, InputImage, InputLimits, InputProblem, none_readable
from .names import ACCEPTED, IMAGES_ACCEPTED, NOT_AN_IMAGE, is_image_name, is_noise
from .zips import MEMBER_ERRORS, count_zip_images, iter_zip

DEFAULT_LIMITS = InputLimits()  # frozen: the one default of every reader


def iter_inputs(source: str | Path | bytes, name: str | None = None,
                limits: InputLimits = DEFAULT_LIMITS) -> Iterator[InputImage | InputProblem]:
    """Yield every image (as bytes) or problem in an image file, a folder (recursive) or a zip.

    ``source`` may be a path or the uploaded bytes themselves (then ``name`` says what it was).
    Raises InputError for an input that holds no readable image at all.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "upload"
        content = bytes(source)
        if label.lower().endswith(".zip") or zipfile.is_zipfile(io.BytesIO(content)):
            yield from iter_zip(io.BytesIO(content), label, limits)
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
            yield from iter_zip(handle, label, limits)
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


def count_images(source: str | Path | bytes, limits: InputLimits = DEFAULT_LIMITS) -> int | None:
    """How many images ``iter_inputs(source)`` will look at (names only, for progress bars), or None
    when that cannot be told cheaply; never raises (reading the source reports its problems)."""
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            handle = io.BytesIO(source)
        elif Path(source).is_dir():
            return sum(1 for p in Path(source).rglob("*") if p.is_file() and not p.is_symlink()
                       and is_image_name(p.name) and not is_noise(p.relative_to(source).as_posix()))
        elif _is_zip_path(Path(source)):
            handle = Path(source).open("rb")  # noqa: SIM115 (closed by the with below)
        else:
            return 1 if Path(source).is_file() else None
        with handle:
            return count_zip_images(handle, limits)
    except (InputError, *MEMBER_ERRORS, NotImplementedError):
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
    """Every image under ``root`` (called ``label``); other files and symbolic links are reported, links
    never followed (nothing outside it is read)."""
    images, unreadable, links = 0, [], 0
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if is_noise(relative):
            continue
        if path.is_symlink():
            links += 1
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
        else:  # as in a zip: a folder's .jfif photos and .bak copies were left out in silence
            yield InputProblem(relative, f"{NOT_AN_IMAGE} ({IMAGES_ACCEPTED})")
    if images == 0:
        if unreadable:
            raise none_readable(label, unreadable)
        # a folder of links only: "holds no images" with no word of the links left out
        skipped = f"; {links} symbolic link{'s' if links != 1 else ''} not followed" if links else ""
        raise InputError(f"{label}: the folder holds no images ({ACCEPTED}){skipped}")
