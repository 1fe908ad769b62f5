"""The detection commands, and training that never reaches the network."""

from __future__ import annotations

import csv
import ipaddress
import json
import socket
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from bloodcells.cli import main
from bloodcells.detection import DETECTOR_CLASSES, LARGEST_RED_CELL, MIN_TILE_SIZE, Detector, train_detector
from bloodcells.synthetic import encode, smear_field, write_voc_dataset, write_yolo_dataset


def _outbound(address) -> bool:
    """Whether a socket address leaves this machine (AF_UNIX paths and loopback do not)."""
    if not isinstance(address, tuple):
        return False
    try:
        return not ipaddress.ip_address(address[0]).is_loopback
    except ValueError:  # a host name: resolving it would be the first step out
        return address[0] != "localhost"


@pytest.mark.slow
def test_training_attempts_no_outbound_connection(tmp_path, monkeypatch):
    attempts = []
    real_connect, real_connect_ex, real_getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                       socket.getaddrinfo)

    def connect(self, address):
        if _outbound(address):
            attempts.append(("connect", address))
            raise OSError("network blocked by the test")
        return real_connect(self, address)

    def connect_ex(self, address):
        if _outbound(address):
            attempts.append(("connect_ex", address))
            return 101  # ENETUNREACH
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost") and _outbound((host, 0)):
            attempts.append(("getaddrinfo", host))
            raise socket.gaierror("name resolution blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    voc = write_voc_dataset(tmp_path / "voc", n_train=2, n_val=1, size=(96, 64))
    trained = train_detector(voc, epochs=1, imgsz=64, batch=2, workers=0, cache=False, out=tmp_path / "out",
                             work_dir=tmp_path / "work", verbose=False)
    assert trained.path.is_file() and (tmp_path / "out" / "metrics.json").is_file()
    assert set(trained.metrics["voc"]["classes"]) <= set(DETECTOR_CLASSES)
    assert attempts == []


@pytest.mark.slow
def test_detect_command_writes_rows_counts_and_annotated_images(trained_detector, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "no-models"))  # no classifier here
    (tmp_path / "fields").mkdir()
    for n in range(2):
        smear_field(160, 120, seed=n)[0].save(tmp_path / "fields" / f"field_{n}.png")
    out = tmp_path / "detections.csv"
    code = main(["detect", str(tmp_path / "fields"), "--out", str(out), "--annotated", str(tmp_path / "drawn"),
                 "--model", str(trained_detector), "--conf", "0.001"])
    printed = capsys.readouterr().out
    assert code == 0
    with out.open(encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "class", "confidence", "x1", "y1", "x2", "y2", "code", "path",
                             "sub_confidence"]
    assert {r["file"] for r in rows} == {"field_0.png", "field_1.png"}
    assert all(r["code"] == "" for r in rows)
    assert "white cells not typed" in printed
    total = ", ".join(f"{c} {sum(r['class'] == c for r in rows)}" for c in DETECTOR_CLASSES)
    assert f"all 2 images: {total}" in printed
    for n in range(2):
        drawn = Image.open(tmp_path / "drawn" / f"field_{n}.png")
        assert drawn.size == (160, 120)


@pytest.mark.parametrize("slide", [False, True])
def test_annotated_images_whose_names_would_be_one_file_are_each_drawn(trained_detector, tmp_path, monkeypatch,
                                                                       capsys, slide):
    """``x.jpg`` beside ``x.jpg.png``, and two 280-character names differing in their middle (shortened
    there to fit a file system), were drawn onto one file each: 5 images gave 4 drawings, said as written."""
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "no-models"))
    long = "slide-" + "a" * 130 + "{}" + "b" * 130 + ".png"
    names = ["x.jpg", "x.jpg.png", long.format("field001"), long.format("field002")]
    with zipfile.ZipFile(tmp_path / "fields.zip", "w") as archive:  # names a file system refuses come in zips
        for n, file in enumerate(names):  # each its own size, to tell the drawings apart
            archive.writestr(file, encode(smear_field(160 + 8 * n, 120, seed=n)[0]))
    code = main(["detect", str(tmp_path / "fields.zip"), "--out", str(tmp_path / "d.csv"), "--annotated",
                 str(tmp_path / "drawn"), "--model", str(trained_detector), "--conf", "0.001", "--no-store",
                 *(["--slide"] if slide else [])])
    printed = capsys.readouterr().out
    assert code == 0
    drawings = sorted(tmp_path.joinpath("drawn").iterdir())
    assert sorted(Image.open(d).size[0] for d in drawings) == [160, 168, 176, 184]
    assert "x.jpg.png: drawn as x.jpg.png (2).png" in printed or "x.jpg: drawn as x.jpg (2).png" in printed


@pytest.mark.slow
def test_evaluate_detector_command_prints_each_class_and_overall(trained_detector, tmp_path, capsys):
    voc = write_voc_dataset(tmp_path / "voc", n_train=0, n_val=2, size=(128, 96))
    assert main(["evaluate-detector", "--data", str(voc), "--model", str(trained_detector)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.split() and line.split()[0] in {*DETECTOR_CLASSES, "all"}]
    assert [line.split()[0] for line in table] == [*DETECTOR_CLASSES, "all"]
    assert "mAP50-95" in "\n".join(lines)
    assert all(0 <= float(v) <= 1 for line in table for v in line.split()[-4:])


def test_detector_commands_name_what_is_wrong(tmp_path, capsys):
    assert main(["train-detector", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    write_yolo_dataset(tmp_path / "yolo", n_train=1, n_val=1, size=(64, 48))
    assert main(["train-detector", "--data", str(tmp_path / "yolo"), "--model", "yolo11n.pt", "--out", str(tmp_path / "out")]) == 2
    assert "nothing is downloaded" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # refused by the parser, naming the option typed
        main(["train-detector", "--data", str(tmp_path / "yolo"), "--multi-scale", "1.5", "--out", str(tmp_path / "out")])
    assert "--multi-scale: 1.5: give a number in [0, 1)" in capsys.readouterr().err and not (tmp_path / "out").exists()
    field = tmp_path / "field.png"
    smear_field(64, 48)[0].save(field)
    assert main(["detect", str(field), "--out", str(tmp_path / "d.csv"),
                 "--model", str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt: detector weights missing" in capsys.readouterr().err


def test_detect_refuses_tiles_whose_overlap_cannot_hold_a_cell(tmp_path, monkeypatch, capsys):
    """``--tile-size 64`` was taken: tiles overlapping by 16 px cut every cell, and a field gave 334 white
    cells instead of 5."""
    monkeypatch.setattr(Detector, "load", classmethod(lambda *_args, **_options: pytest.fail("refused before")))
    field = tmp_path / "field.png"
    smear_field(64, 48)[0].save(field)
    assert main(["detect", str(field), "--out", str(tmp_path / "d.csv"), "--tile-size", "64"]) == 2
    error = capsys.readouterr().err
    assert "tile size 64 px is too small" in error and f"at least {MIN_TILE_SIZE} px" in error
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    assert f"at least {MIN_TILE_SIZE}: tiles overlap by a quarter" in " ".join(capsys.readouterr().out.split())
    yolo = SimpleNamespace(names={0: "WBC"})  # what Detector itself reads of the loaded model
    with pytest.raises(ValueError, match=f"at least {MIN_TILE_SIZE} px"):
        Detector(yolo, Path("d.pt"), "0" * 64, 480, tile_size=MIN_TILE_SIZE - 1)
    assert Detector(yolo, Path("d.pt"), "0" * 64, 480, tile_size=MIN_TILE_SIZE).overlap == LARGEST_RED_CELL


@pytest.mark.slow
def test_fine_tuning_earlier_weights_at_a_larger_input_records_where_it_started(trained_detector, tmp_path):
    """The shipped detector is the 320 px one fine-tuned at 416 px: metrics.json names the weights it
    started from, the architecture they were built from, the new input size the app then uses, and
    the multi-scale setting it was trained with."""
    from bloodcells.detection import Detector
    from bloodcells.store import sha256_file

    voc = write_voc_dataset(tmp_path / "voc", n_train=2, n_val=1, size=(128, 96))
    trained = train_detector(voc, model=trained_detector, epochs=1, imgsz=96, batch=2, workers=0, cache=False,
                             multi_scale=0.25, out=tmp_path / "out", work_dir=tmp_path / "work", verbose=False)
    recorded = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # the batches' sizes varied: ultralytics ran with the setting, and the record says so
    assert yaml.safe_load((tmp_path / "work" / "runs" / "train" / "args.yaml").read_text())["multi_scale"] == 0.25
    assert recorded["multi_scale"] == 0.25
    assert recorded["initial_weights"] == {"file": str(trained_detector), "sha256": sha256_file(trained_detector)}
    assert recorded["architecture"] == "yolo11n.yaml" and recorded["imgsz"] == 96
    assert Detector.load(trained.path).imgsz == 96 and sha256_file(trained.path) != sha256_file(trained_detector)


def test_the_command_line_prints_the_differential_as_the_report_counts_it():
    """NGS, NGS, LYT and a smudge cell: the CLI said NGS 50.0% where the PDF and the pages say 67%."""
    from bloodcells.cli.detection import differential_line

    assert differential_line({"NGS": 2, "LYT": 1, "KSC": 1}) == (
        "3 counted, Segmented neutrophils 2 (66.7%), Lymphocytes 1 (33.3%); not in the count: Smudge cells 1")
    assert differential_line({"NIF": 1, "PLT": 2}) == "0 counted; not in the count: Platelets 2, Not identifiable 1"
    # smear fields are a blood film, as their report: its erythroblasts are not white cells
    assert differential_line({"NGS": 3, "EBO": 2}) == (
        "3 counted, Segmented neutrophils 3 (100.0%); not in the count: Erythroblasts 2")


@pytest.mark.parametrize("command", ["detect", "train-detector", "evaluate", "adapt", "train", "train-attributes"])
def test_a_folder_to_write_that_cannot_be_made_is_refused_before_the_work(tmp_path, monkeypatch, capsys, command):
    """``--annotated out/cells.csv/ann`` (out/cells.csv a file) ran the whole detection, stored it, then failed
    with "[Errno 20] Not a directory"; --out of evaluate, adapt and the trainings after their work likewise."""
    from bloodcells.store import open_store

    monkeypatch.setattr(Detector, "load", classmethod(lambda *_args, **_options: pytest.fail("refused before")))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cells.csv").write_text("a file")
    field = tmp_path / "field.png"
    smear_field(64, 48)[0].save(field)
    folder = str(tmp_path / "out" / "cells.csv" / "ann")
    data = ["--data", str(tmp_path)]
    arguments = {"detect": ["detect", str(field), "--out", str(tmp_path / "d.csv"), "--annotated", folder],
                 "train-detector": ["train-detector", *data, "--out", folder],
                 "evaluate": ["evaluate", *data, "--out", folder],
                 "adapt": ["adapt", *data, "--out", folder],
                 "train": ["train", *data, "--out", folder],
                 "train-attributes": ["train-attributes", "--csv", str(tmp_path / "a.csv"), "--out", folder]}[command]
    assert main(arguments) == 2
    assert f"{folder}: cannot be made, {tmp_path / 'out' / 'cells.csv'} is a file" in capsys.readouterr().err
    store = open_store()
    assert store.list_analyses() == []
    store.engine.dispose()  # its SQLite files are not removed later, in another test's watch of the temp folders
