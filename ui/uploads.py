"""Uploaded files, handed to ``bloodcells`` as files on disk in the app's scratch space.

On disk, the package can count a zip's members for the progress bar and stream it member by
member; the scratch folder lives under the data folder and goes when the work is done, or, when
the server was killed before it could remove it, with the next upload (``_remove_abandoned``).
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from bloodcells.inputs import IMAGE_SUFFIXES, InputError, disk_path, is_noise, unique_names
from bloodcells.settings import settings

IMAGE_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
# The uploaders take any file: Streamlit's own type filter would answer a wrong file with a traceback
# on the server side, where uploaded_source and open_image answer with the file's name and the reason.
ACCEPTED = f"Accepted: .zip, {', '.join('.' + t for t in IMAGE_TYPES)}"


# Each upload's scratch folder holds this file, locked while the upload is worked on: the system
# releases the lock when the process ends, however it ends (SIGKILL, the OOM killer, a power cut).
IN_USE = ".in-use"
SETTLING_SECONDS = 60  # a folder younger than this may be one whose lock is being taken


def _remove_abandoned(scratch: Path) -> None:
    """Remove the scratch folders of uploads whose process died before its ``with`` block could: a
    lab's zip of cells left on the server for good, filling the disk."""
    for folder in scratch.iterdir():
        try:
            if not folder.is_dir() or time.time() - folder.stat().st_mtime < SETTLING_SECONDS:
                continue
            with (folder / IN_USE).open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its upload is being worked on
                shutil.rmtree(folder)
        except OSError:  # in use, or removed meanwhile by another server's sweep
            continue


def _safe_name(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    return str(disk_path(base)) if base not in {"", ".", ".."} else "upload"


def upload_label(files: Sequence) -> str:
    """A name for the analysis: the zip's name, or the images' names (noise such as Thumbs.db, which reading
    leaves out in silence, left out of it too: it was named first among "4 files" of 3 cells)."""
    files = [f for f in files if not is_noise(f.name)] or list(files)
    if len(files) == 1:
        return files[0].name
    shown = ", ".join(f.name for f in files[:3])
    kind = "images" if all(Path(f.name).suffix.lower() in IMAGE_SUFFIXES for f in files) else "files"
    return f"{len(files)} {kind} ({shown}{', …' if len(files) > 3 else ''})"


def _is_zip(upload) -> bool:
    """A zip by its name or, named as an image, by its content (a zip renamed ``cells.jpg``, which the command line
    opens as one); an Office file (.xlsx, .docx: zips too) beside the images is one of the files not used."""
    name = upload.name.lower()
    return name.endswith(".zip") or (Path(name).suffix in IMAGE_SUFFIXES and upload.getvalue()[:4] == b"PK\x03\x04")


@contextmanager
def uploaded_source(files: Sequence, zip_only: bool = False) -> Iterator[Path]:
    """One zip as a file, or several images as a folder; raises InputError on a mix or an odd type."""
    if not files:
        raise InputError("nothing was uploaded")
    zips = [f for f in files if _is_zip(f)]
    if zip_only and not (len(files) == 1 and zips):
        raise InputError(f"{', '.join(f.name for f in files)}: upload one .zip of class folders")
    if not zips and all(Path(f.name).suffix.lower() not in IMAGE_SUFFIXES for f in files):
        raise InputError(f"{', '.join(f.name for f in files)}: not an image or a .zip "
                         f"(accepted: {', '.join(IMAGE_TYPES)}, zip)")
    if zips and len(files) > 1:
        raise InputError(f"{', '.join(f.name for f in zips)}: drop one .zip on its own, or several images")
    scratch = settings().data_dir / "uploads"
    scratch.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(scratch)
    # the lock is let go before the folder goes; a sweep that takes it in between removes the folder first
    with tempfile.TemporaryDirectory(dir=scratch, ignore_cleanup_errors=True) as folder, \
            (Path(folder) / IN_USE).open("w") as in_use:
        fcntl.flock(in_use, fcntl.LOCK_EX)
        if zips:
            path = Path(folder) / _safe_name(zips[0].name)
            path.write_bytes(zips[0].getvalue())
            yield path
            return
        images = Path(folder) / "images"  # named by the caller (``upload_label``) in what it reports
        images.mkdir()
        # Files beside the images that are not images go in too: read as a folder, as the command line
        # reads one, they are named among the files not used, or left out as noise (Thumbs.db); a
        # Thumbs.db dropped with a selection of cells refused them all.
        # two uploads of one name are both kept, the second renamed as a zip's second member is
        for upload, name in zip(files, unique_names(_safe_name(f.name) for f in files), strict=True):
            (images / name).write_bytes(upload.getvalue())
        yield images
