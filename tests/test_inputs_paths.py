"""Bad uploads through every path that reads user files: the CLI, ``classify``, ``detect`` and the
app's upload handling. Each names the file and its problem, the rest of the batch goes on, an
analysis that cannot be read is marked failed with the reason, and nothing is written outside the
app's data folder.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from bloodcells.inputs import InputError
from bloodcells.synthetic import cell_image, encode

GOOD_CELLS = {f"cells/{code}_{n}.png": encode(cell_image(code, n, 32)) for code in ("LYT", "NGS") for n in range(3)}
BAD_MEMBERS = {  # member -> what the report must say about it (text.jpg and half.png: found when decoding)
    "../../escaped.png": "unsafe path",
    "/etc/absolute.png": "unsafe path",
    "link.png": "symbolic link",
    "inner.zip": "zip inside the zip",
    "secret.png": "encrypted",
    "text.jpg": "not an image",
    "half.png": "truncated",
    "notes.txt": "not an image file",
}


def _hostile_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in GOOD_CELLS.items():
            archive.writestr(name, content)
        archive.writestr("../../escaped.png", GOOD_CELLS["cells/LYT_0.png"])
        archive.writestr("/etc/absolute.png", GOOD_CELLS["cells/LYT_0.png"])
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("inner.zip", b"PK\x05\x06" + bytes(18))
        secret = zipfile.ZipInfo("secret.png")
        archive.writestr(secret, GOOD_CELLS["cells/NGS_0.png"])
        archive.writestr("text.jpg", b"this is a note, not a picture")
        archive.writestr("half.png", GOOD_CELLS["cells/NGS_1.png"][:120])
        archive.writestr("notes.txt", b"x")
    data = bytearray(path.read_bytes())
    for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.find(signature)
        while at >= 0:  # mark secret.png encrypted (Python cannot write encrypted zips)
            if data[at + name_at:at + name_at + 10] == b"secret.png":
                data[at + flags_at] |= 0x1
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


def _snapshot(root: Path, excluded: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if excluded not in p.parents and p != excluded}


def _check_report(problems: dict[str, str]) -> None:
    """Every bad member named by its path inside the upload, whether the zip or the decoder refused it (the
    zip's refusals were named ``hostile.zip/link.png``, the decoder's ``text.jpg``)."""
    assert problems.keys() == BAD_MEMBERS.keys()
    for name, fragment in BAD_MEMBERS.items():
        assert fragment in problems[name], (name, problems[name])


def test_classify_reports_every_bad_member_and_classifies_the_rest(trained_models_dir, store, tmp_path):
    from bloodcells.classify import classify

    upload = _hostile_zip(tmp_path / "hostile.zip")
    outcome = classify(upload, classifier=_classifier(trained_models_dir), store=store)
    assert [row.filename for row in outcome.rows] == list(GOOD_CELLS)
    _check_report({p.name: p.problem for p in outcome.problems})
    analysis = store.get_analysis(outcome.analysis_id)
    assert analysis.status == "done" and sorted(p.filename for p in analysis.predictions) == sorted(GOOD_CELLS)


def _classifier(models_dir):
    from bloodcells.classify import load_classifier

    return load_classifier(models_dir)


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("not-a-zip.zip", b"hello, this is text", "not a zip file"),
    ("empty.zip", b"PK\x05\x06" + bytes(18), "empty"),
    ("no-images.zip", None, "holds no images"),
])
def test_an_unreadable_upload_marks_its_analysis_failed_with_the_reason(trained_models_dir, store, name, content,
                                                                        fragment):
    from bloodcells.classify import classify
    from bloodcells.store import Analysis

    if content is None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("readme.txt", "no cells here")
        content = buffer.getvalue()
    with pytest.raises(InputError, match=f"^{name}: .*{fragment}"):
        classify(content, name=name, classifier=_classifier(trained_models_dir), store=store)
    (analysis,) = store.list_analyses()
    assert (analysis.name, analysis.status) == (name, "failed")
    assert name in analysis.error and fragment in analysis.error
    assert store.count_rows(Analysis) == 1 and store.get_analysis(analysis.id).predictions == []


def test_cli_classify_reports_and_writes_only_in_the_data_folder(trained_models_dir, tmp_path, monkeypatch, capsys):
    from bloodcells.cli import main
    from bloodcells.settings import settings

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    upload = _hostile_zip(tmp_path / "hostile.zip")
    data_dir = settings().data_dir
    before = _snapshot(tmp_path, data_dir)
    assert main(["classify", str(upload), "--models", str(trained_models_dir)]) == 0
    out = capsys.readouterr().out
    for name, fragment in BAD_MEMBERS.items():
        (line,) = [line for line in out.splitlines() if line.startswith("skipped ") and f"{name}: " in line]
        assert fragment in line
    assert f"{len(GOOD_CELLS)} cells:" in out
    assert _snapshot(tmp_path, data_dir) == before  # the database went into the data folder, nothing else
    assert (data_dir / "bloodcells.db").is_file()


@pytest.mark.parametrize(("name", "content"), [("text.zip", b"plain text, not a zip"),
                                               ("notes.txt", b"a note"),
                                               ("empty.png", b"")])
def test_cli_refuses_an_unreadable_upload_in_one_line(trained_models_dir, tmp_path, capsys, name, content):
    from bloodcells.cli import main

    path = tmp_path / name
    path.write_bytes(content)
    assert main(["classify", str(path), "--models", str(trained_models_dir), "--no-store"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and name in error and "Traceback" not in error


def test_cli_refuses_a_zip_with_a_damaged_directory(trained_models_dir, tmp_path, capsys):
    from bloodcells.cli import main

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.png", GOOD_CELLS["cells/LYT_0.png"])
    data = bytearray(buffer.getvalue())
    directory = data.find(b"PK\x01\x02")
    data[directory:directory + 4] = b"XXXX"
    path = tmp_path / "damaged.zip"
    path.write_bytes(bytes(data))
    assert main(["classify", str(path), "--models", str(trained_models_dir), "--no-store"]) == 2
    assert "damaged.zip" in capsys.readouterr().err


@pytest.mark.slow
def test_detect_reports_every_bad_member_and_detects_in_the_rest(trained_detector, tmp_path):
    from bloodcells.detection import Detector, detect

    upload = _hostile_zip(tmp_path / "hostile.zip")
    annotated = tmp_path / "annotated"
    outcome = detect(upload, detector=Detector.load(trained_detector), type_white_cells=False,
                     annotate_to=annotated)
    assert outcome.files == list(GOOD_CELLS)
    _check_report({p.name: p.problem for p in outcome.problems})
    written = {p.relative_to(annotated).as_posix() for p in annotated.rglob("*.png")}
    assert written == set(GOOD_CELLS)  # an unsafe member name never becomes a path


# -- the app's uploads -------------------------------------------------------------------------------
class Upload:
    """What Streamlit's file_uploader hands the page: a name and the bytes."""

    def __init__(self, name: str, content: bytes):
        self.name, self._content = name, content

    def getvalue(self) -> bytes:
        return self._content


def test_app_uploads_stay_in_the_data_folder_and_are_removed(tmp_path, monkeypatch):
    from bloodcells.inputs import InputImage, iter_inputs
    from bloodcells.settings import settings
    from ui.uploads import uploaded_source

    monkeypatch.chdir(tmp_path)
    data_dir = settings().data_dir
    before = _snapshot(tmp_path, data_dir)
    image = GOOD_CELLS["cells/LYT_0.png"]
    for files in ([Upload("../../../escape.zip", _hostile_zip(tmp_path.parent / f"{tmp_path.name}-z.zip").read_bytes())],
                  [Upload("../a.png", image), Upload("/abs/a.png", image), Upload("x/../../b.png", image)]):
        with uploaded_source(files) as source:
            assert data_dir / "uploads" in source.parents
            names = [item.name for item in iter_inputs(source) if isinstance(item, InputImage)]
            assert names
        assert not any((data_dir / "uploads").iterdir())
    (tmp_path.parent / f"{tmp_path.name}-z.zip").unlink()
    assert _snapshot(tmp_path, data_dir) == before
    with pytest.raises(InputError, match="notes.txt: not an image"), uploaded_source([Upload("notes.txt", b"x")]):
        pass
    assert not os.path.exists(tmp_path.parent / "escape.zip")


def test_uploads_of_one_name_each_keep_a_name_no_other_upload_has():
    """field.jpg, field.jpg, field-1.jpg: the second was written as field-1.jpg and the third as field-1-2.jpg,
    so the Detection and Classification pages showed the second image's results under the third's name."""
    from bloodcells.inputs import InputImage, iter_inputs
    from ui.uploads import uploaded_source

    a, b, c, d = (GOOD_CELLS[name] for name in sorted(GOOD_CELLS)[:4])
    files = [Upload("field.jpg", a), Upload("field.jpg", b), Upload("field-1.jpg", c), Upload("field (2).jpg", d)]
    with uploaded_source(files) as source:
        read = {item.name: item.content for item in iter_inputs(source) if isinstance(item, InputImage)}
    assert read == {"field.jpg": a, "field (3).jpg": b, "field-1.jpg": c, "field (2).jpg": d}


def test_uploaded_images_with_odd_files_beside_them_are_read_as_the_command_line_reads_a_folder():
    """Cells dropped with a Thumbs.db or a notes.txt: the page refused them all ("Thumbs.db: not an image or
    a .zip"), where the command line reads the same folder, ignores Thumbs.db and names notes.txt as not used.
    A zip renamed .jpg, which the command line opens as a zip, was "not an image"."""
    from bloodcells.inputs import InputImage, InputProblem, iter_inputs
    from ui.uploads import uploaded_source

    a, b = (GOOD_CELLS[name] for name in sorted(GOOD_CELLS)[:2])
    files = [Upload("neu.jpg", a), Upload("Thumbs.db", b"\xd0\xcf"), Upload("notes.txt", b"slide 7"), Upload("lym.jpg", b),
             Upload("results.xlsx", zip_of({"xl/workbook.xml": b"<x/>"}))]  # a zip inside, named as what it is
    with uploaded_source(files) as source:
        items = list(iter_inputs(source))
    assert {i.name: i.content for i in items if isinstance(i, InputImage)} == {"neu.jpg": a, "lym.jpg": b}
    assert [(i.name, "not an image" in i.problem) for i in items if isinstance(i, InputProblem)] == [
        ("notes.txt", True), ("results.xlsx", True)]
    with uploaded_source([Upload("cells.jpg", zip_of({"NGS/a.png": a, "b.png": b}))]) as source:
        assert sorted(i.name for i in iter_inputs(source) if isinstance(i, InputImage)) == ["NGS/a.png", "b.png"]
    with pytest.raises(InputError, match=r"^Thumbs.db, notes.txt: not an image or a .zip"), \
            uploaded_source([Upload("Thumbs.db", b"x"), Upload("notes.txt", b"x")]):
        pass
    from ui.uploads import upload_label

    # the analysis's name: "4 files (Thumbs.db, neu.jpg, ...)" for 2 cells named the noise reading leaves out
    assert upload_label([Upload("Thumbs.db", b"x"), Upload("neu.jpg", a), Upload("lym.jpg", b)]) == \
        "2 images (neu.jpg, lym.jpg)"
    assert upload_label([Upload("neu.jpg", a), Upload("notes.txt", b"x")]) == "2 files (neu.jpg, notes.txt)"


LONG_NAME = "Ausstrich_Zählkammer_" + "ä" * 120 + ".png"  # 142 characters, 265 bytes: over a file name's 255


def test_an_upload_whose_name_is_longer_than_a_file_name_may_be_is_read(tmp_path, monkeypatch):
    """It failed the whole upload: "[Errno 36] File name too long" naming the server's scratch path."""
    from bloodcells.inputs import InputImage, iter_inputs
    from ui.uploads import uploaded_source

    image = GOOD_CELLS["cells/LYT_0.png"]
    for files, images in (([Upload(LONG_NAME, image), Upload("short.png", image)], 2),
                          ([Upload(LONG_NAME.replace(".png", ".zip"), zip_of({"a.png": image}))], 1)):
        with uploaded_source(files) as source:
            assert len([item for item in iter_inputs(source) if isinstance(item, InputImage)]) == images


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.slow
def test_annotated_images_of_one_stem_or_a_long_name_are_each_written(trained_detector, tmp_path):
    """field01.png and field01.jpg both became field01.png (one overwrote the other), and a member
    name over 255 bytes crashed ``detect --annotated`` with a traceback."""
    from bloodcells.detection import Detector, detect
    from bloodcells.synthetic import smear_field

    field = smear_field(160, 120, n_wbc=1, n_rbc=4, n_platelets=1, seed=3)[0]
    jpeg = io.BytesIO()
    field.save(jpeg, "JPEG")
    upload = zip_of({"field01.png": encode(field), "field01.jpg": jpeg.getvalue(), f"deep/{LONG_NAME}": encode(field)})
    annotated = tmp_path / "annotated"
    outcome = detect(upload, name="fields.zip", detector=Detector.load(trained_detector), type_white_cells=False,
                     annotate_to=annotated)
    assert len(outcome.files) == 3
    long, *others = sorted(p.relative_to(annotated).as_posix() for p in annotated.rglob("*.png"))
    assert others == ["field01.jpg.png", "field01.png"]
    assert long.startswith("deep/Ausstrich_Zählkammer_ä") and long.endswith("ä.png") and "…" in long
    assert len(Path(long).name.encode()) <= 200
    assert all(Image.open(annotated / name).size == (160, 120) for name in [long, *others])


def test_images_none_of_which_can_be_read_fail_the_analysis_naming_each(trained_models_dir, store, tmp_path,
                                                                        capsys):
    """It was a finished analysis of 0 cells (CLI exit 0), the reason hidden in a skipped list."""
    from bloodcells.classify import classify, load_classifier
    from bloodcells.cli import main

    upload = zip_of({"a.png": b"not an image", "b.png": GOOD_CELLS["cells/LYT_0.png"][:60]})
    with pytest.raises(InputError, match=r"^bad.zip: none of its 2 images could be used \(a.png: not an image .*; "
                                         r"b.png: damaged or truncated"):
        classify(upload, name="bad.zip", classifier=load_classifier(trained_models_dir), store=store)
    [analysis] = store.list_analyses()
    assert analysis.status == "failed" and "none of its 2 images could be used" in analysis.error
    (tmp_path / "bad.zip").write_bytes(upload)
    assert main(["classify", str(tmp_path / "bad.zip"), "--models", str(trained_models_dir), "--no-store"]) == 2
    assert "bad.zip: none of its 2 images could be used" in capsys.readouterr().err


def test_the_pages_after_a_multi_page_files_first_are_reported(trained_models_dir):
    from bloodcells.classify import classify, load_classifier

    first, second = (cell_image(code, 0, 32) for code in ("LYT", "NGS"))
    tiff = io.BytesIO()
    first.save(tiff, "TIFF", save_all=True, append_images=[second])
    outcome = classify(tiff.getvalue(), name="cells.tif", classifier=load_classifier(trained_models_dir))
    assert len(outcome.rows) == 1
    assert [str(p) for p in outcome.problems] == ["cells.tif (page 2): not read: only the first page of a "
                                                  "multi-page file is analysed; save each page as an image of its own"]
    assert Image.open(io.BytesIO(tiff.getvalue())).n_frames == 2


@pytest.mark.slow
def test_a_field_too_large_to_open_is_an_error_not_an_empty_smear(trained_detector, store):
    """It was "Saved as analysis: 0 cells on 0 images" and "No cell was found", the reason folded away."""
    from bloodcells.detection import Detector, detect

    big = Image.new("RGB", (10_001, 10_000), (230, 200, 200))
    content = io.BytesIO()
    big.save(content, "PNG")
    with pytest.raises(InputError, match=r"^big.png: its one image could not be used \(big.png: 10001x10000 "
                                         r"pixels is over the limit"):
        detect(content.getvalue(), name="big.png", detector=Detector.load(trained_detector), type_white_cells=False,
               store=store)
    assert [a.status for a in store.list_analyses()] == ["failed"]


def test_an_upload_left_by_a_killed_server_is_removed_by_the_next_and_a_live_one_kept(tmp_path, monkeypatch):
    """kill -9 of the app server mid-classification left the lab's zip in data/uploads for good."""
    from bloodcells.settings import settings
    from ui.uploads import uploaded_source

    monkeypatch.setenv("BLOODCELLS_DATA_DIR", str(tmp_path / "data"))
    script = textwrap.dedent("""
        import sys, time
        from ui.uploads import uploaded_source

        class Upload:
            name = sys.argv[1]
            def getvalue(self):
                return b"PK cells of a patient"

        with uploaded_source([Upload()]) as source:
            print(source, flush=True)
            time.sleep(600)
    """)
    children = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).resolve().parents[1]) for name in ("killed.zip", "running.zip")]
    try:
        killed, running = (Path(child.stdout.readline().strip()) for child in children)
        children[0].send_signal(signal.SIGKILL)
        children[0].wait()
        for folder in (killed.parent, running.parent):  # older than a lock being taken
            os.utime(folder, (time.time() - 120, time.time() - 120))
        with uploaded_source([Upload("next.png", GOOD_CELLS["cells/LYT_0.png"])]) as source:
            assert source.is_dir()
        assert not killed.parent.exists()
        assert running.is_file()  # its server still works on it
        assert sorted(p.name for p in (settings().data_dir / "uploads").iterdir()) == [running.parent.name]
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_a_skipped_member_is_said_once_and_an_image_alone_is_not_offered_zip(trained_models_dir, tmp_path, capsys):
    """"skipped ../evil.png: unsafe path (absolute or '..'), skipped"; ``explain x.zip``: "... accepted: ..., .zip"."""
    from bloodcells.cli import main
    from bloodcells.inputs import open_image

    upload = tmp_path / "cells.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("../evil.png", GOOD_CELLS["cells/LYT_0.png"])
        archive.writestr("notes.txt", b"x")
        archive.writestr("cell.png", GOOD_CELLS["cells/LYT_0.png"])
    assert main(["classify", str(upload), "--no-store", "--models", str(trained_models_dir)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert lines == ["skipped ../evil.png: unsafe path (absolute or '..')",
                     "skipped notes.txt: not an image file (accepted: .bmp, .gif, .jfif, .jpe, .jpeg, .jpg, .png, .tif, .tiff, .webp)"]
    with pytest.raises(InputError, match=r"not an image .*accepted: .*\.webp\)$"):
        open_image(b"PK not an image", "cells.zip")
