"""Slide mode: fields of one smear registered onto each other, each cell counted once, the slide's counts.

The fields are crops of one large generated smear, so where each lies and which cells it shows are
known; the test detector reports exactly the cells (or the parts of them) inside each crop.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass, replace

import numpy as np
import pytest

from bloodcells.cli import main
from bloodcells.detection import (
    DETECTOR_CLASSES,
    DetectedBox,
    Detector,
    FieldImage,
    SlideCount,
    canonical_class,
    count_slide,
    detect,
    register_fields,
)
from bloodcells.signout import clinical_rows, slide_differential
from bloodcells.synthetic import encode, smear_field

CROP = (640, 480)
# Five 640x480 fields of a 1536x816 smear, in upload order: three across the top, two below on the
# left (an L; the bottom-right of the smear is left unphotographed). Neighbours share 30% of a field;
# diagonal neighbours only 9% (192 x 144 px), under the 10% that proves an overlap by itself.
ORIGINS = {"a.png": (0, 0), "b.png": (448, 0), "c.png": (896, 0), "d.png": (0, 336), "e.png": (448, 336)}
NEIGHBOURS = {("a.png", "b.png"), ("b.png", "c.png"), ("a.png", "d.png"), ("b.png", "e.png"), ("d.png", "e.png")}
MIN_VISIBLE = 4  # px: the test detector does not report a sliver of a cell on a field's edge
CODES = ("LYT", "EOS", "NGS")


@dataclass
class Smear:
    cells: list[DetectedBox]  # every cell of the whole smear, in its coordinates (white cells with their type)
    images: dict[str, bytes]  # field name -> PNG
    origins: dict[str, tuple[int, int]]

    def seen(self, file: str) -> list[DetectedBox]:
        """The cells (the parts of them) inside one field, in its pixels."""
        x0, y0 = self.origins[file]
        boxes = []
        for cell in self.cells:
            x1, y1 = max(cell.x1 - x0, 0), max(cell.y1 - y0, 0)
            x2, y2 = min(cell.x2 - x0, CROP[0]), min(cell.y2 - y0, CROP[1])
            if x2 - x1 >= MIN_VISIBLE and y2 - y1 >= MIN_VISIBLE:
                boxes.append(DetectedBox(file, cell.class_code, cell.confidence, x1, y1, x2, y2, code=cell.code))
        return boxes

    def cells_in_union(self) -> list[DetectedBox]:
        return [cell for cell in self.cells
                if any(self._visible(cell, origin) for origin in self.origins.values())]

    @staticmethod
    def _visible(cell: DetectedBox, origin: tuple[int, int]) -> bool:
        x0, y0 = origin
        return (min(cell.x2 - x0, CROP[0]) - max(cell.x1 - x0, 0) >= MIN_VISIBLE
                and min(cell.y2 - y0, CROP[1]) - max(cell.y1 - y0, 0) >= MIN_VISIBLE)


def one_smear(seed: int = 11, origins: dict[str, tuple[int, int]] = ORIGINS) -> Smear:
    image, truth = smear_field(1536, 816, n_wbc=10, n_rbc=70, n_platelets=25, seed=seed, wbc_codes=CODES)
    cells, white = [], 0
    for n, box in enumerate(truth):
        code = None
        if box.cls == "WBC":
            white += 1
            code = CODES[white % len(CODES)]  # the type smear_field drew the white cell as
        # confidences differ per cell, so merging never has to break a tie
        cells.append(DetectedBox("smear", canonical_class(box.cls), 0.5 + n / (2 * len(truth)), box.x1, box.y1,
                                 box.x2, box.y2, code=code))
    images = {name: encode(image.crop((x, y, x + CROP[0], y + CROP[1]))) for name, (x, y) in origins.items()}
    return Smear(cells, images, dict(origins))


class SeesTheSmear:
    """A detector (``Detector``'s interface as ``detect`` uses it) that reports the cells of each field and types
    the white ones itself (so ``detect`` runs with typing off)."""
    sha256 = "s" * 64
    min_field_side = 32  # smaller fields are skipped, as by Detector

    def __init__(self, smear: Smear):
        self.smear = smear

    def find(self, image, file: str = "", *, confidence: float) -> list[DetectedBox]:
        return self.smear.seen(file)


def zipped(tmp_path, images: dict[str, bytes], extra: dict[str, bytes] | None = None):
    path = tmp_path / "slide.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in {**images, **(extra or {})}.items():
            archive.writestr(name, content)
    return path


def per_class(boxes) -> dict[str, int]:
    return {code: sum(b.class_code == code for b in boxes) for code in DETECTOR_CLASSES}


# -- registration ---------------------------------------------------------------------------------
def test_overlapping_fields_are_found_with_their_offsets():
    from PIL import Image

    smear = one_smear()
    fields = [FieldImage.of(name, Image.open(io.BytesIO(png))) for name, png in smear.images.items()]
    found = register_fields(fields)
    assert {(o.first, o.second) for o in found} == NEIGHBOURS
    for o in found:
        (x1, y1), (x2, y2) = ORIGINS[o.first], ORIGINS[o.second]
        assert o.dx == pytest.approx(x2 - x1, abs=2) and o.dy == pytest.approx(y2 - y1, abs=2)
        assert o.overlap == pytest.approx(0.3, abs=0.01) and o.agreement >= 0.9


@pytest.mark.parametrize("seed", range(4))
def test_unrelated_fields_are_not_registered(seed):
    """Generated fields look alike (the same discs on the same background): only pixels that agree count."""
    fields = [FieldImage.of(f"{n}.png", smear_field(*CROP, n_wbc=3, n_rbc=25, n_platelets=6, seed=100 * seed + n)[0])
              for n in range(4)]
    assert register_fields(fields) == []


def test_fields_of_different_sizes_are_registered():
    from PIL import Image

    image, _ = smear_field(900, 600, n_wbc=4, n_rbc=40, n_platelets=10, seed=5)
    whole = FieldImage.of("whole.png", image)
    part = FieldImage.of("part.png", image.crop((500, 250, 820, 490)))  # wholly inside the first
    [overlap] = register_fields([whole, FieldImage.of("elsewhere.png", Image.new("RGB", (300, 200), "white")), part])
    assert (overlap.first, overlap.second) == ("whole.png", "part.png")
    assert (overlap.dx, overlap.dy) == (pytest.approx(500, abs=2), pytest.approx(250, abs=2))
    assert overlap.overlap == pytest.approx(1.0)


# -- counting once --------------------------------------------------------------------------------
def test_a_slide_of_overlapping_fields_counts_each_cell_once(tmp_path, store):
    smear = one_smear()
    result = detect(zipped(tmp_path, smear.images), detector=SeesTheSmear(smear), type_white_cells=False,
                    store=store, slide=True, wbc_target=200)
    slide = result.slide
    raw = {name: per_class(smear.seen(name)) for name in smear.images}
    union = per_class(smear.cells_in_union())
    summed = {code: sum(counts[code] for counts in raw.values()) for code in DETECTOR_CLASSES}
    assert all(summed[code] > union[code] for code in DETECTOR_CLASSES), "the fields must share cells"

    assert slide.counts == union == per_class(result.boxes)
    assert [f.file for f in slide.fields] == list(ORIGINS)
    assert {f.file: f.found for f in slide.fields} == raw
    assert slide.groups == [list(ORIGINS)]
    first = ORIGINS["a.png"]
    for f in slide.fields:
        assert (f.x, f.y) == (pytest.approx(ORIGINS[f.file][0] - first[0], abs=2),
                              pytest.approx(ORIGINS[f.file][1] - first[1], abs=2))
    # every box kept is one true cell, on the field it is attributed to and in that field's pixels
    matched = []
    for box in result.boxes:
        x0, y0 = ORIGINS[box.file]
        centre = ((box.x1 + box.x2) / 2 + x0, (box.y1 + box.y2) / 2 + y0)
        [cell] = [c for c in smear.cells if c.x1 <= centre[0] <= c.x2 and c.y1 <= centre[1] <= c.y2]
        assert cell.class_code == box.class_code
        matched.append(id(cell))
    assert len(set(matched)) == len(matched)

    rbc = [raw[name]["RBC"] for name in ORIGINS]
    plt = [raw[name]["PLT"] for name in ORIGINS]
    assert slide.rbc_per_field.mean == pytest.approx(np.mean(rbc))
    assert slide.rbc_per_field.sd == pytest.approx(np.std(rbc, ddof=1))
    assert (slide.rbc_per_field.low, slide.rbc_per_field.high) == (min(rbc), max(rbc))
    assert slide.plt_per_field.mean == pytest.approx(np.mean(plt))
    assert slide.plt_per_field.sd == pytest.approx(np.std(plt, ddof=1))
    assert slide.platelet_rbc_ratio == pytest.approx(union["PLT"] / union["RBC"], abs=1e-4)
    # white cells: each counted once towards the target, with the type the smear drew it as
    assert slide.white_cells.counted == union["WBC"] < 200 and slide.white_cells.untyped == 0
    drawn = {code: sum(c.code == code for c in smear.cells_in_union()) for code in CODES}
    assert {code: row["count"] for code, row in slide.white_cells.differential.items()} == \
        {code: n for code, n in drawn.items() if n}
    assert str(slide.white_cells) == f"{union['WBC']} of 200 white cells: target not reached (5 fields)"

    stored = store.get_analysis(result.analysis_id)
    assert len(stored.detections) == len(result.boxes)
    assert SlideCount.from_dict(stored.summary["slide"]) == slide
    assert stored.summary["slide"]["statement"] == str(slide.white_cells)
    assert stored.summary["counts"] == union


def test_the_differential_stops_at_the_target_in_upload_order():
    fields, boxes = [], []
    for n in range(5):  # unrelated fields, three white cells each, typed in turn
        image, truth = smear_field(*CROP, n_wbc=3, n_rbc=8, n_platelets=2, seed=200 + n)
        fields.append(FieldImage.of(f"{n}.png", image))
        white = sorted((b for b in truth if b.cls == "WBC"), key=lambda b: (b.y1, b.x1))
        boxes += [DetectedBox(f"{n}.png", "WBC", 0.9, b.x1, b.y1, b.x2, b.y2, code=CODES[(n + i) % 3])
                  for i, b in enumerate(white)]
        boxes += [DetectedBox(f"{n}.png", canonical_class(b.cls), 0.9, b.x1, b.y1, b.x2, b.y2)
                  for b in truth if b.cls != "WBC"]
    boxes.append(DetectedBox("4.png", "WBC", 0.9, 600, 440, 630, 470))  # one white cell the tree did not type

    slide, kept = count_slide(fields, boxes, wbc_target=7)
    assert slide.overlaps == [] and len(slide.groups) == 5 and len(kept) == len(boxes)
    # fields 0 and 1 give six white cells, the first (topmost) white cell of field 2 the seventh
    expected = [CODES[(n + i) % 3] for n in range(2) for i in range(3)] + [CODES[2]]
    assert slide.white_cells.counted == 7 and slide.white_cells.fields_used == 3 and slide.white_cells.reached
    assert {code: row["count"] for code, row in slide.white_cells.differential.items()} == \
        {code: expected.count(code) for code in set(expected)}
    assert sum(row["percent"] for row in slide.white_cells.differential.values()) == pytest.approx(100, abs=0.2)
    assert str(slide.white_cells) == "7 of 7 white cells: target reached in 3 fields"

    short, _ = count_slide(fields, boxes, wbc_target=100)
    assert (short.white_cells.counted, short.white_cells.untyped, short.white_cells.reached) == (16, 1, False)
    assert str(short.white_cells) == "16 of 100 white cells: target not reached (5 fields)"
    with pytest.raises(ValueError, match="positive number of white cells"):
        count_slide(fields, boxes, wbc_target=0)


def test_cells_the_differential_keeps_apart_do_not_count_towards_the_target():
    """A white cell cut at a field's edge, typed "not identifiable", was the second of a 2-cell target: the
    count stopped before the next field's neutrophil, and the report said "1 of a 2-cell target"."""
    fields, boxes = [], []
    for n, codes in enumerate([["NGS", "NIF", "EBO", "KSC"], ["LYT", "NGS"]]):
        image, _ = smear_field(*CROP, n_wbc=0, n_rbc=2, n_platelets=0, seed=300 + n)
        fields.append(FieldImage.of(f"{n}.png", image))
        boxes += [DetectedBox(f"{n}.png", "WBC", 0.9, 10, 10 + 40 * i, 40, 40 + 40 * i, code=code)
                  for i, code in enumerate(codes)]
    slide, _ = count_slide(fields, boxes, wbc_target=2)
    white = slide.white_cells
    # NGS, then the not identifiable, erythroblast (a blood film's: apart) and smudge cells taken but not
    # counted, then the next field's lymphocyte
    assert (white.counted, white.fields_used, white.reached) == (2, 2, True)
    assert {code: row["count"] for code, row in white.differential.items()} == \
        {"NGS": 1, "NIF": 1, "EBO": 1, "KSC": 1, "LYT": 1}
    assert clinical_rows(list(slide_differential({"slide": slide.as_dict()}).codes.elements()),
                         specimen="peripheral blood")[2] == 2  # the report counts what the slide counted


def test_unrelated_fields_keep_all_their_cells(tmp_path):
    images, truths = {}, {}
    for n in range(3):
        image, truth = smear_field(*CROP, n_wbc=2, n_rbc=15, n_platelets=4, seed=300 + n)
        images[f"{n}.png"], truths[f"{n}.png"] = encode(image), truth

    class Drawn:
        sha256 = "d" * 64
        min_field_side = 32

        def find(self, image, file="", *, confidence):
            return [DetectedBox(file, canonical_class(b.cls), 0.9, b.x1, b.y1, b.x2, b.y2) for b in truths[file]]

    result = detect(zipped(tmp_path, images), detector=Drawn(), type_white_cells=False, slide=True)
    assert result.slide.overlaps == [] and result.slide.groups == [[name] for name in images]
    assert result.slide.counts == {code: sum(canonical_class(b.cls) == code for t in truths.values() for b in t)
                                   for code in DETECTOR_CLASSES}
    assert len(result.boxes) == sum(len(t) for t in truths.values())


def test_a_single_field_is_a_slide(tmp_path):
    smear = one_smear(origins={"only.png": (300, 200)})
    result = detect(zipped(tmp_path, smear.images), detector=SeesTheSmear(smear), type_white_cells=False, slide=True)
    slide = result.slide
    seen = per_class(smear.seen("only.png"))
    assert slide.counts == seen and slide.overlaps == [] and slide.groups == [["only.png"]]
    assert slide.rbc_per_field.mean == seen["RBC"] and slide.rbc_per_field.sd is None
    assert "(range" in str(slide.rbc_per_field) and "±" not in str(slide.rbc_per_field)
    assert str(slide.white_cells) == f"{seen['WBC']} of 100 white cells: target not reached (1 field)"


def test_an_unreadable_file_is_listed_and_the_slide_still_counted(tmp_path):
    smear = one_smear(origins={name: ORIGINS[name] for name in ("a.png", "b.png")})
    source = zipped(tmp_path, smear.images, extra={"broken.png": b"not an image"})
    result = detect(source, detector=SeesTheSmear(smear), type_white_cells=False, slide=True)
    assert [p.name for p in result.problems] == ["broken.png"]
    assert [f.file for f in result.slide.fields] == ["a.png", "b.png"]
    assert [(o.first, o.second) for o in result.slide.overlaps] == [("a.png", "b.png")]
    assert result.slide.counts == per_class(smear.cells_in_union())


def test_a_zip_of_two_slides_folders_is_refused_in_slide_mode_and_counted_apart_without_it(tmp_path, store):
    """A zip holding slideA/ and slideB/ was counted as one slide, two patients' white cells in one differential,
    with no word said."""
    from bloodcells.inputs import InputError

    class SeesInFolders(SeesTheSmear):  # each folder's field "a.png" is the smear's "a.png"
        def find(self, image, file="", *, confidence):
            return [replace(box, file=file) for box in self.smear.seen(file.split("/")[-1])]

    smear = one_smear(origins={name: ORIGINS[name] for name in ("a.png", "b.png")})
    images = {f"slide{side}/{name}": content for side in "AB" for name, content in smear.images.items()}
    sees = SeesInFolders(smear)
    source = zipped(tmp_path, images)
    with pytest.raises(InputError, match=r"more than one folder \(slideA/, slideB/\): detect each slide on its own"):
        detect(source, detector=sees, type_white_cells=False, slide=True, store=store)
    [failed] = store.list_analyses()
    assert failed.status == "failed" and "more than one folder" in failed.error
    apart = detect(source, detector=sees, type_white_cells=False, store=store)  # fields counted apart: as asked
    assert apart.slide is None and len(apart.files) == 4
    one = {f"slideA/{name}": content for name, content in smear.images.items()}  # one slide in a folder: counted
    (tmp_path / "one").mkdir()
    assert detect(zipped(tmp_path / "one", one), detector=sees, type_white_cells=False,
                  slide=True).slide.counts == per_class(smear.cells_in_union())


def test_slide_mode_with_the_trained_yolo_detector(trained_detector, tmp_path):
    """The real detector's boxes go through the same merge: what two fields both show is kept once."""
    image, _ = smear_field(288, 120, n_wbc=2, n_rbc=10, n_platelets=3, seed=9)
    images = {"left.png": encode(image.crop((0, 0, 160, 120))), "right.png": encode(image.crop((128, 0, 288, 120)))}
    detector = Detector.load(trained_detector)
    result = detect(zipped(tmp_path, images), detector=detector, type_white_cells=False, confidence=0.001,
                    slide=True)
    [overlap] = result.slide.overlaps
    assert (overlap.dx, overlap.dy) == (pytest.approx(128, abs=2), pytest.approx(0, abs=2))
    found = sum(sum(f.found.values()) for f in result.slide.fields)
    assert sum(result.slide.counts.values()) == len(result.boxes) <= found
    assert {b.file for b in result.boxes} <= set(images)


# -- command line ---------------------------------------------------------------------------------
def test_detect_command_in_slide_mode(tmp_path, monkeypatch, capsys):
    smear = one_smear()
    monkeypatch.setattr(Detector, "load", classmethod(lambda _cls, *_args, **_options: SeesTheSmear(smear)))
    out = tmp_path / "cells.csv"
    assert main(["detect", str(zipped(tmp_path, smear.images)), "--out", str(out), "--slide", "--wbc-target", "5",
                 "--no-typing", "--no-store"]) == 0
    printed = capsys.readouterr().out
    union = per_class(smear.cells_in_union())
    with out.open(encoding="utf-8-sig") as handle:
        assert per_class([DetectedBox(r["file"], r["class"], 1, 0, 0, 0, 0) for r in csv.DictReader(handle)]) == union
    assert "slide: 5 fields, 1 group of overlapping fields, 0 fields overlapping no other" in printed
    assert "a.png + b.png: offset (+448, +0), 30% of the smaller field" in printed
    assert "whole slide, each cell once: " + ", ".join(f"{c} {union[c]}" for c in DETECTOR_CLASSES) in printed
    assert "red cells per field:" in printed and "platelets per field:" in printed
    assert f"platelet:red cell ratio {union['PLT'] / union['RBC']:.3f}" in printed
    assert "b.png: found " in printed and "(group 1 at (448, 0))" in printed
    assert re.search(r"^differential: 5 of 5 white cells: target reached in [1-5] fields? \| ", printed, re.M)


@pytest.mark.parametrize(("arguments", "message"), [(["--slide", "--wbc-target", "0"], "positive number"),
                                                    (["--slide", "--wbc-target", "-5"], "positive number"),
                                                    (["--wbc-target", "200"], "--wbc-target counts a slide")])
def test_detect_command_refuses_a_bad_target(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.setattr(Detector, "load", classmethod(lambda *_args, **_options: pytest.fail("nothing to detect")))
    field = tmp_path / "field.png"
    smear_field(64, 48)[0].save(field)
    assert main(["detect", str(field), "--out", str(tmp_path / "d.csv"), *arguments]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("slide", [True, False])
def test_annotated_fields_show_the_boxes_kept(tmp_path, slide):
    """In slide mode a field is drawn with the cells counted on it (a shared cell is boxed on one field
    only); otherwise with every box found."""
    from PIL import Image

    from bloodcells.detection import annotate

    smear = one_smear(origins={name: ORIGINS[name] for name in ("a.png", "b.png")})
    result = detect(zipped(tmp_path, smear.images), detector=SeesTheSmear(smear), type_white_cells=False,
                    slide=slide, annotate_to=tmp_path / "drawn")
    found = sum(len(smear.seen(name)) for name in smear.images)
    assert (len(result.boxes) < found) == slide
    for name, png in smear.images.items():
        kept = [b for b in result.boxes if b.file == name]
        drawn = np.asarray(Image.open(tmp_path / "drawn" / name).convert("RGB"))
        assert np.array_equal(drawn, np.asarray(annotate(Image.open(io.BytesIO(png)).convert("RGB"), kept)))


def test_a_slide_typed_by_a_classifier_of_another_tree_is_still_counted():
    """The target's check of the cells the report keeps apart raised "codes not in tree" for a classifier
    trained with a tree of its own, after every field had been through the models."""
    image, _ = smear_field(*CROP, n_wbc=0, n_rbc=2, n_platelets=0, seed=330)
    boxes = [DetectedBox("0.png", "WBC", 0.9, 10, 10 + 40 * i, 40, 40 + 40 * i, code=code)
             for i, code in enumerate(["MYCODE", "NGS"])]
    slide, _ = count_slide([FieldImage.of("0.png", image)], boxes, wbc_target=2)
    assert slide.white_cells.counted == 2
