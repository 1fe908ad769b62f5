"""Property-based fuzz of the zip reader, and its memory bound on a generated zip.

Whatever bytes arrive, ``iter_inputs`` either yields images and per-file problems or raises
``InputError`` naming the upload, and ``open_image`` either decodes to RGB or raises
``InputError`` naming the member: no other exception ever reaches the app.
"""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bloodcells.inputs import (
    InputError,
    InputImage,
    InputLimits,
    InputProblem,
    count_images,
    iter_inputs,
    open_image,
)
from bloodcells.synthetic import cell_image, encode

pytestmark = [pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")]  # damaged TIFF tags

GOOD = encode(cell_image("MON", 0, 24))
LIMITS = InputLimits(max_members=20, max_file_bytes=64 * 1024, max_total_bytes=256 * 1024,
                     ratio_floor_bytes=4096)

names = st.one_of(
    st.sampled_from(["a.png", "NEU/b.jpg", "../up.png", "/abs.png", "C:\\x.png", "..\\y.png", "dir/",
                     "inner.zip", "notes.txt", "__MACOSX/._a.png", "x" * 600 + ".png", "ü/ß.tif", "a.PNG"]),
    st.text(min_size=1, max_size=30).map(lambda text: text + ".png"),
)
contents = st.one_of(st.just(GOOD), st.binary(max_size=600), st.just(GOOD[:50]), st.just(bytes(20_000)))
members = st.lists(st.tuples(names, contents, st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                                                   zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]),
                             st.booleans()), max_size=6)
# (position as a fraction of the zip, replacement bytes): byte-level damage anywhere in the file
damage = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)), max_size=4)


def _zip(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content, method, symlink in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            if symlink:
                info.external_attr = 0o120777 << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def _damaged(data: bytes, changes, truncate: float | None) -> bytes:
    data = bytearray(data)
    for where, replacement in changes:
        at = int(where * len(data))
        data[at:at + len(replacement)] = replacement
    if truncate is not None:
        data = data[: int(truncate * len(data))]
    return bytes(data)


def _consume(data: bytes, label: str = "fuzz.zip") -> tuple[int, int]:
    counted = count_images(data, LIMITS)
    assert counted is None or counted >= 0
    images = problems = 0
    try:
        for item in iter_inputs(data, label, LIMITS):
            if isinstance(item, InputProblem):
                assert item.name and item.problem
                problems += 1
                continue
            assert isinstance(item, InputImage)
            assert len(item.content) <= LIMITS.max_file_bytes
            images += 1
            try:
                assert open_image(item.content, item.name).mode == "RGB"
            except InputError as error:
                assert str(error).startswith(f"{item.name}: ")
    except InputError as error:
        assert str(error).startswith(f"{label}: ")
    return images, problems


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=members, changes=damage, truncate=st.none() | st.floats(0, 1))
def test_zip_reader_never_raises_anything_but_input_error(entries, changes, truncate):
    _consume(_damaged(_zip(entries), changes, truncate))


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_named_zip(data):
    _consume(data)
    _consume(b"PK\x03\x04" + data)


@settings(max_examples=50, deadline=None)
@given(entries=members.filter(bool))
def test_undamaged_zip_yields_every_safe_image_member(entries):
    """Without damage, each member is either yielded whole or reported: nothing disappears silently."""
    expected = sum(1 for name, *_ in entries if not name.endswith("/") and not name.startswith("__MACOSX/"))
    images, problems = _consume(_zip(entries))
    assert images + problems == expected or (images == 0 and problems <= expected)


# -- memory ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_memory_is_bounded_by_one_member_not_the_zip(tmp_path):
    """A 96 MB zip of 1 MiB members plus a 64 MiB bomb member streams in a few MiB of Python memory."""
    path = tmp_path / "big.zip"
    member = 1024 * 1024
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(96):
            archive.writestr(f"cells/{i:03d}.png", os.urandom(member))
        archive.writestr(zipfile.ZipInfo("bomb.png"), bytes(64 * member), compress_type=zipfile.ZIP_DEFLATED)
    tracemalloc.start()
    try:
        read = 0
        problems = []
        for item in iter_inputs(path):
            if isinstance(item, InputImage):
                read += len(item.content)
            else:
                problems.append(item)
            del item
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read == 96 * member
    assert [p.name for p in problems] == ["bomb.png"] and "zip bomb" in problems[0].problem
    print(f"zip of {path.stat().st_size / 2**20:.0f} MiB ({read / 2**20:.0f} MiB of images + a 64 MiB bomb): "
          f"peak traced memory {peak / 2**20:.1f} MiB")
    assert peak < 4 * member


def test_a_zip_whose_end_record_understates_its_files_is_refused_before_parsing(tmp_path):
    """One file declared, 3000 listed: zipfile built every entry (800,000: 500 MB, 20 s) before the limit."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(3000):
            archive.writestr(f"c/{i}.png", b"")
    content = bytearray(path.read_bytes())
    end = content.rindex(zipfile.stringEndArchive)
    content[end + 8:end + 12] = (1).to_bytes(2, "little") * 2  # entries on this disk, and in all
    path.write_bytes(bytes(content))
    with pytest.raises(InputError, match="^liar.zip: 3000 files is more than the limit of 1000"):
        next(iter_inputs(path, limits=InputLimits(max_members=1000)))


def test_index_of_many_members_is_bounded_before_parsing(tmp_path):
    """A zip declaring more members than allowed is refused from its end record, before zipfile indexes it."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(3000):
            archive.writestr(f"c/{i}.png", b"")
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="^many.zip: 3000 files is more than the limit of 1000"):
            next(iter_inputs(path, limits=InputLimits(max_members=1000)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # parsing 3000 entries would take ~1.8 MB


# -- images --------------------------------------------------------------------------------------
def _formats() -> dict[str, bytes]:
    from PIL import Image

    cell = cell_image("EOS", 1, 24)
    encoded = {fmt: encode(cell, fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")}
    encoded["TIFF-16"] = encode(Image.new("I;16", (12, 12), 3000), "TIFF")
    encoded["PNG-RGBA"] = encode(cell.convert("RGBA"), "PNG")
    return encoded


IMAGES = _formats()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(IMAGES)), changes=damage, truncate=st.none() | st.floats(0, 1))
def test_damaged_images_only_ever_raise_input_error(fmt, changes, truncate):
    data = _damaged(IMAGES[fmt], changes, truncate)
    try:
        image = open_image(data, f"cell.{fmt.lower()}")
    except InputError as error:
        assert str(error).startswith(f"cell.{fmt.lower()}: ")
    else:
        assert image.mode == "RGB" and image.width * image.height >= 1
