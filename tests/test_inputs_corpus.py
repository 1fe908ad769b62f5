"""A generated corpus of bad and odd uploads: every one is read, or refused with a message naming it.

Each case is made here from bloodcells.synthetic cells (nothing is downloaded). Single files go
through ``open_image`` and ``iter_inputs``; zips go through ``iter_inputs`` and, for every image it
yields, ``open_image`` -- as the classify and detect paths do.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from bloodcells.inputs import (
    MAX_IMAGE_PIXELS,
    InputError,
    InputImage,
    InputLimits,
    InputProblem,
    count_images,
    iter_inputs,
    later_pages,
    open_image,
)
from bloodcells.synthetic import cell_image, encode

pytestmark = [pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")]

GOOD = encode(cell_image("NGS", 1, 32))


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _cell(mode: str = "RGB", size: int = 32) -> Image.Image:
    return cell_image("NGB", 2, size).convert(mode)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (what a decompression bomb looks like to Pillow)."""
    signature, rest = GOOD[:8], GOOD[8:]
    length, kind = struct.unpack(">I4s", rest[:8])
    assert kind == b"IHDR"
    body = struct.pack(">II", width, height) + rest[16:8 + length]
    ihdr = struct.pack(">I", length) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
    return signature + ihdr + rest[12 + length:]


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _save(cell_image("NGS", 3, 48).crop((0, 0, 48, 24)), "JPEG", exif=exif)


def _sixteen_bit_tiff() -> bytes:
    return _save(Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60), "TIFF")


def _twelve_bit_colour_cell() -> np.ndarray:
    """A generated cell as a 12-bit camera writes it into 16-bit channels (RGB, 0..4095)."""
    eight_bit = np.asarray(cell_image("NGS", 4, 32).crop((0, 0, 32, 24)), dtype=np.int64)
    return (eight_bit * 4095 // 255).astype(np.uint16)  # multiplied in 16 bits, it wrapped round


def _sixteen_bit_colour(fmt: str) -> bytes:
    import cv2

    return cv2.imencode(".png" if fmt == "PNG" else ".tiff", _twelve_bit_colour_cell()[..., ::-1])[1].tobytes()


def _float_tiff(with_nan: bool = False) -> bytes:
    array = np.linspace(-3.5, 1e6, 32 * 32, dtype=np.float32).reshape(32, 32)
    if with_nan:
        array[0, :] = np.nan
        array[1, :] = np.inf
    return _save(Image.fromarray(array), "TIFF")


def _multipage_tiff() -> bytes:
    return _save(_cell(), "TIFF", save_all=True, append_images=[_cell("L")])


def _corrupt_png() -> bytes:
    data = bytearray(GOOD)
    start = GOOD.index(b"IDAT") + 8
    data[start:start + 16] = bytes(16)  # the deflate stream and its CRC no longer agree
    return bytes(data)


def _corrupt_jpeg() -> bytes:
    data = bytearray(_save(_cell(), "JPEG"))
    data[2:40] = b"\xff" * 38  # markers after SOI destroyed
    return bytes(data)


# -- single files -----------------------------------------------------------------------------
@dataclass
class FileCase:
    name: str
    content: bytes
    error: str | None = None  # a fragment of the InputError message; None: must open
    size: tuple[int, int] | None = None


FILE_CASES = [
    FileCase("rgb.png", GOOD, size=(32, 32)),
    FileCase("rgb.jpg", _save(_cell(), "JPEG"), size=(32, 32)),
    # a 1x1 image was typed "blast" and counted in the differential
    FileCase("one-pixel.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "1x1 pixels is too small"),
    FileCase("one-pixel.jpg", _save(Image.new("RGB", (1, 1)), "JPEG"), "too small to show a cell"),
    FileCase("one-pixel-16bit.tif", _save(Image.fromarray(np.array([[7]], dtype=np.uint16)), "TIFF"), "too small"),
    FileCase("smallest.png", _save(Image.new("RGB", (16, 40)), "PNG"), size=(16, 40)),
    FileCase("sixteen-bit-rgb.png", _sixteen_bit_colour("PNG"), size=(32, 24)),
    FileCase("sixteen-bit-rgb.tif", _sixteen_bit_colour("TIFF"), size=(32, 24)),
    FileCase("rgba.png", _save(_cell("RGBA"), "PNG")),
    FileCase("la.png", _save(_cell("LA"), "PNG")),
    FileCase("palette.png", _save(_cell("P"), "PNG")),
    FileCase("palette-transparent.png", _save(_cell("P"), "PNG", transparency=0)),
    FileCase("palette.gif", _save(_cell("P"), "GIF")),
    FileCase("grayscale.png", _save(_cell("L"), "PNG")),
    FileCase("bilevel.png", _save(_cell("1"), "PNG")),
    FileCase("cmyk.jpg", _save(_cell("CMYK"), "JPEG")),
    FileCase("cmyk.tif", _save(_cell("CMYK"), "TIFF")),
    FileCase("sixteen-bit.png", _save(Image.fromarray(np.arange(1024, dtype=np.uint16).reshape(32, 32) * 50), "PNG")),
    FileCase("sixteen-bit.tif", _sixteen_bit_tiff()),
    FileCase("sixteen-bit-flat.tif", _save(Image.fromarray(np.full((16, 16), 999, np.uint16)), "TIFF")),
    FileCase("thirty-two-bit.tif", _save(Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16) * 10**6), "TIFF")),
    FileCase("float.tif", _float_tiff()),
    FileCase("float-nan-inf.tif", _float_tiff(with_nan=True)),
    FileCase("multipage.tif", _multipage_tiff()),
    FileCase("exif-rotated.jpg", _exif_rotated(), size=(24, 48)),
    FileCase("bitmap.bmp", _save(_cell(), "BMP")),
    FileCase("lossless.webp", _save(_cell(), "WEBP", lossless=True)),
    FileCase("jpeg-named.png", _save(_cell(), "JPEG")),  # the content decides, not the suffix
    FileCase("truncated.png", GOOD[: len(GOOD) // 2], "truncated"),
    FileCase("truncated.jpg", _save(_cell(), "JPEG")[:300], "truncated"),
    FileCase("corrupt-data.png", _corrupt_png(), "damaged"),
    FileCase("corrupt-header.jpg", _corrupt_jpeg(), "image"),
    FileCase("text-renamed.jpg", b"Patient 12, smear 3: see attached\n" * 20, "not an image"),
    FileCase("html-renamed.png", b"<!doctype html><title>404</title>", "not an image"),
    FileCase("random-bytes.tif", os.urandom(2048), "image"),
    FileCase("empty.png", b"", "empty"),
    FileCase("bomb-20000x20000.png", _png_header_only(20_000, 20_000),
             f"400000000 pixels is over the limit of {MAX_IMAGE_PIXELS} pixels"),
    FileCase("over-limit-12000x12000.png", _png_header_only(12_000, 12_000),
             f"12000x12000 pixels is over the limit of {MAX_IMAGE_PIXELS} pixels"),
    FileCase("zero-width.png", _png_header_only(0, 10), "image"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.name for c in FILE_CASES])
def test_single_file_opens_or_is_refused_with_its_name(case):
    if case.error is None:
        image = open_image(case.content, case.name)
        assert image.mode == "RGB"
        if case.size:
            assert image.size == case.size
        assert np.asarray(image).dtype == np.uint8
    else:
        with pytest.raises(InputError) as raised:
            open_image(case.content, case.name)
        message = str(raised.value)
        assert message.startswith(f"{case.name}: ")
        assert case.error in message


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.name for c in FILE_CASES])
def test_single_file_upload_goes_through_iter_inputs(case):
    if not case.content:
        with pytest.raises(InputError, match=f"^{case.name}: the file is empty"):
            list(iter_inputs(case.content, case.name))
        return
    assert list(iter_inputs(case.content, case.name)) == [InputImage(case.name, case.content)]


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image.putpixel((0, 0), (10, 20, 30, 255))
    rgb = open_image(_save(image, "PNG"), "rgba.png")
    assert rgb.getpixel((0, 0)) == (10, 20, 30)
    assert rgb.getpixel((15, 15)) == (255, 255, 255)


def test_high_bit_depth_is_scaled_by_its_bit_depth_not_clipped():
    rgb = np.asarray(open_image(_sixteen_bit_tiff(), "sixteen-bit.tif"))
    # 0..61380 in 16 bits: 0..239 of 255 (Pillow alone saturated it at 255), not stretched to 0..255
    assert rgb.min() == 0 and rgb.max() == round(61380 * 255 / 65535) == 239
    assert len(np.unique(rgb)) > 200


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_the_same_picture_at_16_bits_decodes_to_the_same_pixels(fmt):
    """Each 16-bit image was stretched to its own darkest and brightest pixel: a BCCD field saved at 16 bits
    had its colours shifted by 53 of 255 on average, and its white cell (a monocyte) became a segmented
    neutrophil."""
    import cv2

    field = np.asarray(cell_image("MON", 2, 48).point(lambda v: 100 + v * 155 // 255))  # pixels 100..255
    sixteen = field.astype(np.uint16) * 257
    colour = cv2.imencode(f".{fmt.lower()}", sixteen[..., ::-1])[1].tobytes()
    assert np.array_equal(np.asarray(open_image(colour, f"field.{fmt.lower()}")), field)
    grey = np.asarray(Image.fromarray(field).convert("L"))
    grey_sixteen = _save(Image.fromarray(grey.astype(np.uint16) * 257), fmt)
    assert np.array_equal(np.asarray(open_image(grey_sixteen, "grey")), np.dstack([grey] * 3))
    # a float image from 0 to 1, and the same picture in its 8-bit form
    floats = _save(Image.fromarray(grey.astype(np.float32) / 255), "TIFF")
    assert np.array_equal(np.asarray(open_image(floats, "float.tif"))[..., 0], grey)
    mask = _save(Image.fromarray((grey > 150).astype(np.float32)), "TIFF")  # floats of 0.0 and 1.0 only: 0..1
    assert np.array_equal(np.asarray(open_image(mask, "mask.tif"))[..., 0], (grey > 150) * 255)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_colour_keeps_its_brightness_and_colours(fmt):
    """Pillow kept each 16-bit value's high byte: a 12-bit camera's cell came out nearly black
    (mean 12 of 255) and was typed a blast. Its 0..4095 are scaled as 12 bits: the 8-bit cell it came from."""
    rgb = np.asarray(open_image(_sixteen_bit_colour(fmt), f"camera.{fmt.lower()}"), dtype=float)
    eight_bit = np.asarray(cell_image("NGS", 4, 32).crop((0, 0, 32, 24)), dtype=float)
    assert np.abs(rgb - eight_bit).max() <= 1
    assert rgb.mean() > 100


def test_values_of_no_known_scale_are_stretched():
    """Negative or beyond 16 bits or floats beyond 0..1: the darkest value black, the brightest white."""
    for name, content in (("float.tif", _float_tiff()), ("float-nan-inf.tif", _float_tiff(with_nan=True)),
                          ("thirty-two-bit.tif", FILE_CASES[[c.name for c in FILE_CASES].index("thirty-two-bit.tif")].content)):
        rgb = np.asarray(open_image(content, name))
        assert (rgb.min(), rgb.max()) == (0, 255), name


def test_a_multi_page_files_later_pages_are_reported_not_silently_dropped():
    image = open_image(_multipage_tiff(), "cells.tif")
    assert str(later_pages(image, "cells.tif")) == (
        "cells.tif (page 2): not read: only the first page of a multi-page file is analysed; save each page as "
        "an image of its own")  # it said "pages 2-2"
    three = open_image(_save(_cell(), "TIFF", save_all=True, append_images=[_cell("L"), _cell()]), "three.tif")
    assert str(later_pages(three, "three.tif")).startswith("three.tif (pages 2-3): not read")
    assert later_pages(open_image(GOOD, "one.png"), "one.png") is None


def test_exif_rotation_is_applied():
    upright = open_image(_exif_rotated(), "exif-rotated.jpg")
    raw = Image.open(io.BytesIO(_exif_rotated()))
    assert raw.size == (48, 24) and upright.size == (24, 48)


def test_text_is_not_an_image_after_ultralytics_patched_pillow(monkeypatch):
    """ultralytics wraps Image.open to fetch a HEIF plugin for unknown files; offline that must not
    turn "not an image" into an import error, nor try to install anything for each such file."""
    pytest.importorskip("ultralytics.utils.patches")
    import ultralytics.utils.checks
    from PIL import Image as pillow

    assert pillow.open.__module__ != "PIL.Image"  # the patch is in place
    installs = []
    monkeypatch.setattr(ultralytics.utils.checks, "check_requirements", lambda *a, **k: installs.append(a))
    with pytest.raises(InputError, match="^notes.jpg: not an image"):
        open_image(b"a text file renamed .jpg", "notes.jpg")
    assert installs == []
    assert open_image(GOOD, "rgb.png").mode == "RGB"


def test_bomb_is_refused_before_decoding():
    """A 20,000 x 20,000 header would need 1.2 GB to decode: it is refused from the header alone."""
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(InputError, match="over the limit"):
        open_image(_png_header_only(20_000, 20_000), "bomb.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 1024 * 1024


# -- zips ---------------------------------------------------------------------------------------
@dataclass
class Member:
    name: str
    content: bytes = GOOD
    compress: int = zipfile.ZIP_DEFLATED
    symlink: bool = False


@dataclass
class ZipCase:
    name: str
    members: list[Member]
    problems: dict[str, str] = field(default_factory=dict)  # member name -> fragment of its problem
    unreadable: dict[str, str] = field(default_factory=dict)  # yielded, but open_image refuses it
    error: str | None = None  # the whole zip is refused (InputError) with this fragment
    limits: InputLimits = InputLimits()
    patch: object = None  # bytes -> bytes, applied to the finished zip


def _zip(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member in members:
            info = zipfile.ZipInfo(member.name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = member.compress
            if member.symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, member.content)
    return buffer.getvalue()


# (signature, offset of the field, offset of the name length, offset of the name) in a local
# file header and in a central directory entry
_HEADERS = ((b"PK\x03\x04", {"flags": 6, "method": 8}, 26, 30), (b"PK\x01\x02", {"flags": 8, "method": 10}, 28, 46))


def _patch_header(name: str, field_name: str, change):
    """Rewrite a 2-byte header field of member ``name``, in its local header and directory entry."""
    encoded = name.encode()

    def patch(data: bytes) -> bytes:
        data = bytearray(data)
        for signature, fields, length_at, name_at in _HEADERS:
            at = data.find(signature)
            while at >= 0:
                length = struct.unpack("<H", data[at + length_at:at + length_at + 2])[0]
                if data[at + name_at:at + name_at + length] == encoded:
                    where = at + fields[field_name]
                    value = struct.unpack("<H", data[where:where + 2])[0]
                    data[where:where + 2] = struct.pack("<H", change(value))
                at = data.find(signature, at + 4)
        return bytes(data)
    return patch


def _set_flags(name: str, bits: int):
    return _patch_header(name, "flags", lambda flags: flags | bits)


def _set_method(name: str, method: int):
    return _patch_header(name, "method", lambda _: method)


def _corrupt_member_data(name: str):
    """Overwrite the middle of member ``name``'s stored data (CRC or deflate stream breaks)."""
    def patch(data: bytes) -> bytes:
        data = bytearray(data)
        start = data.index(name.encode()) + len(name) + 10
        data[start:start + 40] = b"\x00\xff" * 20
        return bytes(data)
    return patch


class _Unseekable(io.RawIOBase):
    """A write-only stream, like a pipe: zipfile then writes data descriptors (flag bit 3)."""

    def __init__(self):
        self.buffer = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.buffer.write(data)


def _streamed(data: bytes) -> bytes:
    """The same members, written as a streaming zip tool writes them (sizes after the data, zip64)."""
    target = _Unseekable()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            with source.open(info) as member, out.open(info.filename, "w", force_zip64=True) as copy:
                copy.write(member.read())
    return target.buffer.getvalue()


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _prepend_stub(data: bytes) -> bytes:
    return b"#!/bin/sh\necho self-extracting\n" + data  # zipfile finds the directory from the end


def _member_limit_zip(n: int) -> list[Member]:
    return [Member(f"cell_{i}.png") for i in range(n)]


ZIP_CASES = [
    ZipCase("plain.zip", [Member("NEU/a.png"), Member("NEU/b.jpg", _save(_cell(), "JPEG"))]),
    ZipCase("stored.zip", [Member("a.png", compress=zipfile.ZIP_STORED)]),
    ZipCase("bzip2.zip", [Member("a.png", compress=zipfile.ZIP_BZIP2)]),
    ZipCase("lzma.zip", [Member("a.png", compress=zipfile.ZIP_LZMA)]),
    ZipCase("unicode-names.zip", [Member("Zellen/größe_µ.png"), Member("細胞/1.png")]),
    ZipCase("duplicate-names.zip", [Member("same.png"), Member("same.png", _save(_cell(), "JPEG"))]),
    ZipCase("deep.zip", [Member("/".join(["d"] * 40) + "/deep.png")]),
    ZipCase("self-extracting.zip", [Member("a.png")], patch=_prepend_stub),
    ZipCase("streamed-zip64.zip", [Member("a.png"), Member("NEU/b.png")], patch=_streamed),
    ZipCase("mac-noise.zip", [Member("a.png"), Member("__MACOSX/._a.png", b"\x00\x05"), Member(".DS_Store", b"x"),
                              Member("NEU/._b.png", b"\x00\x05\x16\x07")]),  # AppleDouble beside it (ditto, tar)
    # Windows' Compress-Archive (PowerShell 5.1) writes backslashes, folder entries included: "NGS\\" was said
    # as a file not used, and the Mac noise beside it was counted for the progress bar
    ZipCase("windows-backslashes.zip", [Member("NGS\\", b""), Member("NGS\\a.png"),
                                        Member("__MACOSX\\NGS\\._a.png", b"\x00\x05")]),
    ZipCase("zip-slip.zip", [Member("a.png"), Member("../../escaped.png")], {"../../escaped.png": "unsafe path"}),
    ZipCase("absolute.zip", [Member("a.png"), Member("/etc/cron.d/x.png")], {"/etc/cron.d/x.png": "unsafe path"}),
    ZipCase("windows-drive.zip", [Member("a.png"), Member("C:/Windows/x.png")], {"C:/Windows/x.png": "unsafe path"}),
    ZipCase("backslash-slip.zip", [Member("a.png"), Member("..\\..\\x.png")], {"..\\..\\x.png": "unsafe path"}),
    ZipCase("symlink.zip", [Member("a.png"), Member("link.png", b"/etc/passwd", symlink=True)],
            {"link.png": "symbolic link"}),
    ZipCase("nested.zip", [Member("a.png"), Member("inner.zip", _zip([Member("b.png")]))],
            {"inner.zip": "zip inside the zip"}),
    ZipCase("encrypted.zip", [Member("a.png"), Member("secret.png")], {"secret.png": "encrypted"},
            patch=_set_flags("secret.png", 0x1)),
    ZipCase("ratio-bomb.zip", [Member("a.png"), Member("bomb.png", bytes(4 * 1024 * 1024))],
            {"bomb.png": "zip bomb"}),
    ZipCase("member-too-large.zip", [Member("a.png"), Member("big.png", os.urandom(5000))],
            {"big.png": "over the limit"}, limits=InputLimits(max_file_bytes=4096)),
    ZipCase("total-too-large.zip", [Member("a.png"), Member("b.png", encode(cell_image("LYT", 0, 32)))],
            {"b.png": "total uncompressed size"}, limits=InputLimits(max_total_bytes=len(GOOD) + 10)),
    ZipCase("bad-crc.zip", [Member("a.png"), Member("broken.png", os.urandom(500), zipfile.ZIP_STORED)],
            {"broken.png": "cannot be read"}, patch=_corrupt_member_data("broken.png")),
    ZipCase("bad-deflate.zip", [Member("a.png"), Member("broken.png", bytes(range(256)) * 20)],
            {"broken.png": "cannot be read"}, patch=_corrupt_member_data("broken.png")),
    ZipCase("unknown-method.zip", [Member("a.png"), Member("odd.png")], {"odd.png": "compressed with method 99"},
            patch=_set_method("odd.png", 99)),
    # Windows' own zips over 2 GB: it said "That compression method is not supported", naming none
    ZipCase("deflate64.zip", [Member("a.png"), Member("big.png")], {"big.png": "compressed with deflate64"},
            patch=_set_method("big.png", 9)),
    ZipCase("long-name.zip", [Member("a.png"), Member("x" * 600 + ".png")], {"x" * 600 + ".png": "longer than"}),
    ZipCase("mixed.zip", [Member("a.png"), Member("report.pdf", b"%PDF-1.4"), Member("labels.csv", b"a,b")],
            {"report.pdf": "not an image", "labels.csv": "not an image"}),
    ZipCase("control-characters.zip", [Member("a.png"), Member("bad\nname\t.png")],
            {"bad\nname\t.png": "control characters"}),
    ZipCase("nameless-member.zip", [Member("a.png"), Member("")], {"": "not an image"}),
    ZipCase("empty-member.zip", [Member("a.png"), Member("zero.png", b"")], {"zero.png": "empty"}),
    ZipCase("bad-images-inside.zip", [Member("a.png"), Member("text.jpg", b"not a picture"),
                                      Member("half.png", GOOD[:100])],
            unreadable={"text.jpg": "not an image", "half.png": "truncated"}),
    ZipCase("bomb-image-inside.zip", [Member("a.png"), Member("huge.png", _png_header_only(20_000, 20_000))],
            unreadable={"huge.png": "over the limit"}),
    ZipCase("empty.zip", [], error="empty"),
    ZipCase("only-folders.zip", [Member("NEU/", b"")], error="empty"),
    ZipCase("only-text.zip", [Member("readme.txt", b"hi"), Member("data.csv", b"1")], error="holds no images"),
    ZipCase("only-noise.zip", [Member("__MACOSX/._a.png", b"\x00")], error="holds no images"),
    ZipCase("only-a-zip.zip", [Member("inner.zip", _zip([Member("b.png")]))],
            error="holds no images, only zips inside it (inner.zip), which are not opened: upload each on its own"),
    ZipCase("only-bad-members.zip", [Member("../a.png"), Member("b.png")], error="none of its 2 images",
            patch=_set_flags("b.png", 0x1)),
    ZipCase("too-many-members.zip", _member_limit_zip(11), error="more than the limit of 10",
            limits=InputLimits(max_members=10)),
    ZipCase("index-too-large.zip", _member_limit_zip(30), error="directory of", limits=InputLimits(max_index_bytes=500)),
    ZipCase("truncated.zip", [Member("a.png"), Member("b.png")], error="not a zip file", patch=_truncate),
]

NOT_ZIPS = [
    ("text-named.zip", b"this is not a zip\n" * 10),
    ("png-named.zip", GOOD),
    ("zero-bytes.zip", b""),
    ("eocd-only.zip", b"PK\x05\x06" + b"\x00" * 18),  # an empty zip: a directory with no members
    ("eocd-lying.zip", b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 5, 5, 460, 0, 0)),
]


def _build(case: ZipCase) -> bytes:
    data = _zip(case.members)
    return case.patch(data) if case.patch else data


def _shown(member: str) -> str:
    """The name a problem is reported under: its path inside the upload, as an image's (Windows separators
    read as folders), or "(no name)"."""
    return member.replace("\\", "/") or "(no name)"


def _read_all(data: bytes, name: str, limits: InputLimits):
    images, problems = [], []
    for item in iter_inputs(data, name, limits):
        (images if isinstance(item, InputImage) else problems).append(item)
    return images, problems


@pytest.mark.parametrize("case", ZIP_CASES, ids=[c.name for c in ZIP_CASES])
def test_zip_corpus(case):
    data = _build(case)
    counted = count_images(data, case.limits)  # for progress bars: never raises
    if case.error:
        assert counted in (None, 0)
        with pytest.raises(InputError) as raised:
            _read_all(data, case.name, case.limits)
        assert str(raised.value).startswith(f"{case.name}: ")
        assert case.error in str(raised.value)
        return
    images, problems = _read_all(data, case.name, case.limits)
    assert len(images) <= counted <= len(images) + len(problems)
    assert all(isinstance(p, InputProblem) for p in problems)
    found = {p.name: p.problem for p in problems}
    assert set(found) == {_shown(member) for member in case.problems}
    for member, fragment in case.problems.items():
        assert fragment in found[_shown(member)]
    # The rest of the batch went on: every member that has no problem was read, whole.
    names = {m.name: m.name.replace("\\", "/") for m in case.members}
    expected = [m for m in case.members if m.name not in case.problems and not names[m.name].startswith("__MACOSX/")
                and m.name != ".DS_Store" and "/._" not in names[m.name] and not names[m.name].endswith("/")]
    assert [i.content for i in images] == [m.content for m in expected]
    assert len({i.name for i in images}) == len(images)  # each under a name of its own (see below)
    for image in images:
        if image.name in case.unreadable:
            with pytest.raises(InputError, match=case.unreadable[image.name]) as raised:
                open_image(image.content, image.name)
            assert str(raised.value).startswith(f"{image.name}: ")
        else:
            assert open_image(image.content, image.name).mode == "RGB"


def test_two_members_of_one_name_are_two_images():
    """They were one to the rest of the app: one image on the Detection page with both fields' boxes,
    and a slide that credited both fields' cells to each."""
    data = _build(next(c for c in ZIP_CASES if c.name == "duplicate-names.zip"))
    images, _ = _read_all(data, "duplicate-names.zip", InputLimits())
    assert [i.name for i in images] == ["same.png", "same (2).png"]


def test_a_renamed_member_never_takes_the_name_of_another():
    """The second ``same.png`` was read as ``same (2).png`` and the zip's own ``same (2).png`` as
    ``same (2) (2).png``: one field's cells were shown under the other's name."""
    first, second, third = (_save(_cell(mode), "PNG") for mode in ("RGB", "L", "RGBA"))
    data = _zip([Member("same.png", first), Member("same.png", second), Member("same (2).png", third)])
    images, _ = _read_all(data, "clash.zip", InputLimits())
    assert {i.name: i.content for i in images} == {"same.png": first, "same (3).png": second, "same (2).png": third}


@pytest.mark.parametrize(("name", "content"), NOT_ZIPS, ids=[n for n, _ in NOT_ZIPS])
def test_a_non_zip_named_zip_is_refused_with_its_name(name, content, tmp_path):
    for source in (content, tmp_path / name):
        if isinstance(source, type(tmp_path)):
            source.write_bytes(content)
        with pytest.raises(InputError) as raised:
            list(iter_inputs(source, name if isinstance(source, bytes) else None))
        assert str(raised.value).startswith(f"{name}: ")


def test_corpus_is_at_least_fifty_inputs():
    assert len(FILE_CASES) + len(ZIP_CASES) + len(NOT_ZIPS) + len(FOLDER_CASES) >= 50


# -- folders (the CLI reads them) ----------------------------------------------------------------
def _folder_with_symlink_out(root):
    (root / "a.png").write_bytes(GOOD)
    outside = root.parent / "outside.png"
    outside.write_bytes(GOOD)
    (root / "link.png").symlink_to(outside)
    (root / "linked-dir").symlink_to(root.parent, target_is_directory=True)
    return {"link.png": "symbolic link", "linked-dir": "symbolic link"}


def _folder_with_zip_and_text(root):
    (root / "sub").mkdir()
    (root / "sub" / "a.png").write_bytes(GOOD)
    (root / "notes.txt").write_text("hello")
    (root / "more.zip").write_bytes(_zip([Member("b.png")]))
    (root / "empty.png").write_bytes(b"")
    return {"more.zip": "zip inside a folder", "empty.png": "empty", "notes.txt": "not an image file"}


FOLDER_CASES = [_folder_with_symlink_out, _folder_with_zip_and_text]


@pytest.mark.parametrize("make", FOLDER_CASES)
def test_folder_reports_links_and_zips_and_reads_the_rest(make, tmp_path):
    root = tmp_path / "upload"
    root.mkdir()
    expected = make(root)
    images, problems = [], []
    for item in iter_inputs(root):
        (images if isinstance(item, InputImage) else problems).append(item)
    assert {p.name: p.problem for p in problems}.keys() == expected.keys()
    for problem in problems:
        assert expected[problem.name] in problem.problem
    assert [i.content for i in images] == [GOOD]


def test_jpegs_named_jfif_or_jpe_are_read_and_other_files_of_a_folder_reported(tmp_path):
    """A folder of a.jpg, b.jfif (as Windows saves photos), c.jpe and e.jpg.bak was read as "1 cell", the
    others left out in silence (in a zip each was reported)."""
    jpeg = _save(_cell(), "JPEG")
    root = tmp_path / "cells"
    root.mkdir()
    for name in ("a.jpg", "b.jfif", "c.jpe", "d.JPEG", "e.jpg.bak"):
        (root / name).write_bytes(jpeg)
    items = list(iter_inputs(root))
    assert [i.name for i in items if isinstance(i, InputImage)] == ["a.jpg", "b.jfif", "c.jpe", "d.JPEG"]
    assert [str(p) for p in items if isinstance(p, InputProblem)] == [
        "e.jpg.bak: not an image file (accepted: .bmp, .gif, .jfif, .jpe, .jpeg, .jpg, .png, .tif, .tiff, .webp)"]
    assert list(iter_inputs(jpeg, "photo.jfif")) == [InputImage("photo.jfif", jpeg)]  # on its own, as uploaded
    images, problems = _read_all(_zip([Member("b.jfif", jpeg), Member("e.jpg.bak", jpeg)]), "cells.zip", InputLimits())
    assert [i.name for i in images] == ["b.jfif"] and [p.name for p in problems] == ["e.jpg.bak"]


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="^nothing: the folder holds no images"):
        list(iter_inputs(tmp_path / "nothing"))
    links = tmp_path / "links"  # only links to images elsewhere: it said "holds no images", of the links nothing
    links.mkdir()
    (tmp_path / "cell.png").write_bytes(b"png")
    for name in ("a.png", "b.png"):
        (links / name).symlink_to(tmp_path / "cell.png")
    with pytest.raises(InputError, match=r"^links: the folder holds no images \(.*\); 2 symbolic links not followed$"):
        list(iter_inputs(links))


def test_missing_and_unreadable_paths_are_named(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such file"):
        list(iter_inputs(tmp_path / "absent.zip"))
    locked = tmp_path / "locked.png"
    locked.write_bytes(GOOD)

    def refuse(path):  # what a file the app's user may not read does (tests run as root here)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(type(locked), "read_bytes", refuse)
    with pytest.raises(InputError, match="^locked.png: cannot be read \\(Permission denied\\)"):
        list(iter_inputs(locked))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.png").write_bytes(GOOD)
    seen = []
    with pytest.raises(InputError, match=r"^uploaded images: its one image could not be used \(a.png: cannot be "
                       r"read \(Permission denied\)\)"):  # the reason, not only the (scratch) folder's name
        for item in iter_inputs(tmp_path / "folder", name="uploaded images"):
            seen.append(item)
    assert seen == [InputProblem("a.png", "cannot be read (Permission denied)")]


def test_reading_the_whole_corpus_writes_nothing(tmp_path, monkeypatch):
    """Zips are never extracted: reading every malicious zip creates no file, here or next to it."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = {str(p) for p in tmp_path.parent.rglob("*")}
    for case in ZIP_CASES:
        with contextlib.suppress(InputError):
            for item in iter_inputs(_build(case), case.name, case.limits):
                if isinstance(item, InputImage):
                    with contextlib.suppress(InputError):
                        open_image(item.content, item.name)
    # nothing new: earlier tests' SQLite files (-wal, -shm) may go meanwhile, when their stores are collected
    assert {str(p) for p in tmp_path.parent.rglob("*")} - before == set()
