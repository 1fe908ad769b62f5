"""Zips streamed member by member and never extracted: nothing is written to disk, and memory is
bounded by ``InputLimits`` (the zip's index and one member at a time) whatever the zip holds. Each
member is checked from the index (unsafe path, link, encrypted, oversized, zip bomb) before it is read."""

from __future__ import annotations

import lzma
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath

from .items import InputError, InputImage, InputLimits, InputProblem, none_readable
from .names import ACCEPTED, IMAGES_ACCEPTED, MAX_NAME_LENGTH, NOT_AN_IMAGE, is_image_name, is_noise, unique_names

# What reading a damaged zip member can raise besides BadZipFile (zlib/lzma errors are not OSErrors).
MEMBER_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, zlib.error,
                 lzma.LZMAError, struct.error)


def iter_zip(handle, label: str, limits: InputLimits) -> Iterator[InputImage | InputProblem]:
    """Every image or problem in the zip open as ``handle`` (called ``label``); InputError when it holds
    no readable image or breaks a limit of the whole zip."""
    _check_zip_index(handle, label, limits)
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError) as error:
        raise InputError(f"{label}: not a readable zip file ({error})") from error
    with archive:
        # not is_dir(), which knows only "/": Compress-Archive's folder entries end in a backslash
        members = [info for info in archive.infolist() if not _member_name(info).endswith("/")]
        if len(members) > limits.max_members:
            raise InputError(f"{label}: {len(members)} files is more than the limit of {limits.max_members}")
        if not members:
            raise InputError(f"{label}: the zip is empty")
        images, total = 0, 0
        unreadable: list[InputProblem] = []
        zips: list[str] = []
        wanted = [info for info in members if not is_noise(_member_name(info))]
        for info, name in zip(wanted, unique_names(_member_name(info) for info in wanted), strict=True):
            problem = _member_problem(info, limits)
            if problem is None and total + info.file_size > limits.max_total_bytes:
                problem = f"the zip's total uncompressed size would exceed {limits.max_total_bytes} bytes"
            if problem is None:
                try:
                    content = _read_member(archive, info, limits)
                except MEMBER_ERRORS as error:
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


def count_zip_images(handle, limits: InputLimits) -> int:
    """How many members of the zip open as ``handle`` are images that pass the checks of their index
    entries (none is read); raises what opening the zip raises."""
    _check_zip_index(handle, "upload", limits)
    with zipfile.ZipFile(handle) as archive:
        return sum(1 for info in archive.infolist() if is_image_name(name := _member_name(info))
                   and not is_noise(name) and _member_problem(info, limits) is None)


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's path inside the zip, '/'-separated (Windows' Compress-Archive writes NGS\\cell.png), or
    a name to report it under when it has none (zipfile ends a name at its first NUL byte)."""
    return info.filename.replace("\\", "/") or "(no name)"


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


READABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


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
        return f"{NOT_AN_IMAGE} ({IMAGES_ACCEPTED})"
    if any(ord(character) < 32 for character in name):
        return "name contains control characters"
    if len(name) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} characters"
    if info.flag_bits & 0x1:
        return "encrypted (password-protected), cannot be read"
    if info.compress_type not in READABLE_METHODS:  # it said "That compression method is not supported"
        method = zipfile.compressor_names.get(info.compress_type, f"method {info.compress_type}")
        return (f"compressed with {method}, which cannot be read here (Windows makes large zips with deflate64): "
                "zip the images again with the standard method (deflate)")
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
