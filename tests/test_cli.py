import re
import subprocess
import sys
from pathlib import Path

import pytest

from bloodcells.cli import main


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "bloodcells", "--help"], capture_output=True, text=True, check=True)
    for name in ("train", "classify", "evaluate", "detect", "train-detector", "evaluate-detector", "explain",
                 "db", "tree"):
        assert name in result.stdout


def test_tree_show_prints_the_tree(capsys):
    assert main(["tree", "show"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("ALL")
    assert any(line.startswith("      NEU  neutrophil") for line in lines)
    assert any(line.startswith("        NGB  band neutrophil") for line in lines)


def test_tree_resolve(capsys):
    assert main(["tree", "resolve", "BNE"]) == 0
    assert capsys.readouterr().out.split("\t")[2].strip() == "ALL/MYE/MYM/NEU/NGB"
    assert main(["tree", "resolve", "pbc/ig/MMY_1.jpg"]) == 0
    assert "ALL/MYE/MYI/MMZ" in capsys.readouterr().out


def test_unknown_label_is_one_clear_line(capsys):
    assert main(["tree", "resolve", "lymphocite"]) == 2
    err = capsys.readouterr().err
    assert "unknown cell type label 'lymphocite'" in err and "lymphocyte" in err


def test_db_init_creates_the_embedded_database(tmp_path, capsys):
    assert main(["db", "init"]) == 0
    assert (tmp_path / "data" / "bloodcells.db").exists()
    assert main(["db", "current"]) == 0
    from alembic.script import ScriptDirectory

    from bloodcells.store import open_store

    head = ScriptDirectory.from_config(open_store(upgrade=False)._alembic_config()).get_current_head()
    assert head >= "0002" and capsys.readouterr().out.strip().endswith(head)  # upgraded to the newest


def test_db_current_of_a_mistyped_path_says_so_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no such folder" / "lab.db"
    assert main(["db", "current", "--url", f"sqlite:///{missing}"]) == 2
    assert f"no database at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_reading_commands_given_a_mistyped_database_say_so_and_create_nothing(tmp_path, monkeypatch, capsys):
    """`analyses` and `report` made a new, empty database (and its folders) at a mistyped path, then said "no
    analyses yet" and "analysis #1 does not exist", as if the lab's were lost."""
    missing = tmp_path / "lab-data-typo" / "bloodcells.db"
    monkeypatch.setenv("BLOODCELLS_DATABASE_URL", f"sqlite:///{missing}")
    assert main(["analyses"]) == 0
    assert f"no analyses yet (no database at {missing}: nothing was ever stored there" in capsys.readouterr().out
    assert main(["report", "1", "--out", str(tmp_path / "r.pdf")]) == 2
    assert f"no database at {missing}: nothing was ever stored there" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_a_database_folder_this_user_may_not_write_is_said_so(tmp_path, monkeypatch, capsys):
    """A read-only data folder: every command said "cannot be reached or refused the operation: unable to open
    database file". (Tests run as root, whom permissions do not stop: the check itself is what is asked.)"""
    import bloodcells.store.database as database

    folder = tmp_path / "read-only"
    folder.mkdir()
    monkeypatch.setattr(database.os, "access", lambda path, mode: Path(path) != folder)
    assert main(["db", "init", "--url", f"sqlite:///{folder / 'b.db'}"]) == 2
    assert f"the database folder {folder} is not writable by this user" in capsys.readouterr().err


def test_db_backup_copies_the_embedded_database_whole_while_it_is_in_use(tmp_path, capsys):
    """Copying bloodcells.db while the app ran gave a 4 KB file and "(empty database)": the newest changes
    were in its -wal file. The backup holds them, in one file; it never overwrites one; MySQL names mysqldump."""
    from bloodcells.store import PredictionRow, Store, StoreError, open_store

    store = open_store()  # the embedded default, held open as the app holds it
    analysis_id = store.start_analysis("cells.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "NGS", "ALL", 0.9, {}, False, b"image")])
    copy = tmp_path / "backup" / "lab.db"
    copy.parent.mkdir()
    assert main(["db", "backup", str(copy)]) == 0
    assert f"to {copy}" in capsys.readouterr().out
    assert {p.name for p in copy.parent.iterdir()} == {"lab.db"}  # one file, no -wal beside it
    restored = open_store(f"sqlite:///{copy}", upgrade=False)
    [cell] = restored.get_analysis(analysis_id).predictions
    assert restored.read_blob(cell.blob_id) == b"image"
    restored.engine.dispose()
    assert main(["db", "backup", str(copy)]) == 2 and "already there" in capsys.readouterr().err
    assert main(["db", "backup"]) == 2 and "give a FILE" in capsys.readouterr().err
    assert main(["db", "current", str(copy)]) == 2
    with pytest.raises(StoreError, match="mysqldump"):
        Store("mysql+pymysql://lab@127.0.0.1:1/none").backup(tmp_path / "x.db")
    store.engine.dispose()


def test_progress_bar_rate_counts_from_its_first_report():
    """Training reports its first epoch when that epoch is done: the bar's rate must not count
    it as done in no time (it showed tens of thousands of epochs a second and no time left)."""
    import time

    from bloodcells.cli.classification import TqdmProgress

    with TqdmProgress("epochs") as progress:
        progress(5, 10)
        time.sleep(0.2)
        progress(6, 10)
        shown = str(progress.bar)
    rate = float(re.search(r"([\d.]+)epochs/s", shown).group(1))
    assert rate <= 1 / 0.2 + 0.01, shown


def test_an_output_path_that_cannot_be_written_is_refused_before_the_analysis_is_stored(trained_models_dir,
                                                                                        tmp_path, capsys):
    """The analysis was stored "done", then the CSV failed (a traceback for a folder): a rerun made a
    second analysis. A missing folder is now made."""
    from bloodcells.store import open_store
    from bloodcells.synthetic import write_cell_zip

    upload = write_cell_zip(tmp_path / "in.zip", {"LYT": 2}, size=32)
    (tmp_path / "a folder").mkdir()
    assert main(["classify", str(upload), "--models", str(trained_models_dir), "--out", str(tmp_path / "a folder")]) == 2
    assert "a folder: is a folder; give the file to write" in capsys.readouterr().err
    assert open_store().list_analyses() == []
    assert main(["classify", str(upload), "--models", str(trained_models_dir),
                 "--out", str(tmp_path / "new" / "cells.csv")]) == 0
    assert len((tmp_path / "new" / "cells.csv").read_text().splitlines()) == 3


def test_evaluate_writes_the_training_curves_of_a_shared_trunk_tree(shared_trunk_models_dir, tmp_path):
    """Its heads record validation only: the curves raised KeyError 'train_loss' (exit 1)."""
    from bloodcells.synthetic import write_cell_folders

    write_cell_folders(tmp_path / "cells", {"LYT": 3, "EOS": 3, "NGB": 3, "NGS": 3}, size=32)
    assert main(["evaluate", "--data", str(tmp_path / "cells"), "--models", str(shared_trunk_models_dir), "--all",
                 "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "training_curves.png").is_file()


def _field_folder(root):
    from bloodcells.synthetic import smear_field

    root.mkdir()
    for name in ("field1.png", "field2.png"):
        smear_field(64, 48)[0].save(root / name)
    return {p.name: p.read_bytes() for p in root.iterdir()}


@pytest.mark.parametrize("outputs", [
    lambda d: ["--out", str(d / "cells.csv"), "--annotated", str(d)],  # drawings over the fields
    lambda d: ["--out", str(d / "cells.csv"), "--annotated", str(d / "annotated")],  # read as fields next time
    lambda d: ["--out", str(d / "field1.png")],  # the CSV over a field
])
def test_detect_never_writes_over_or_into_what_it_reads(outputs, tmp_path, capsys):
    """`detect fields --annotated fields` replaced each field with its drawing; `--annotated fields/annotated`
    made the next run count every field twice; `--out fields/field1.png` wrote the CSV over a field."""
    from bloodcells.store import open_store

    before = _field_folder(tmp_path / "fields")
    assert main(["detect", str(tmp_path / "fields"), *outputs(tmp_path / "fields")]) == 2
    assert "write it elsewhere" in (err := capsys.readouterr().err) or "give another folder" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "fields").iterdir()} == before
    assert open_store().list_analyses() == []


def test_an_input_file_is_never_the_output(tmp_path, capsys):
    from bloodcells.synthetic import write_cell_zip

    upload = write_cell_zip(tmp_path / "in.zip", {"LYT": 2}, size=32)
    content = upload.read_bytes()
    assert main(["classify", str(upload), "--out", str(upload)]) == 2
    assert "in.zip: would write over the input" in capsys.readouterr().err
    fields = _field_folder(tmp_path / "fields")
    field = tmp_path / "fields" / "field1.png"
    assert main(["detect", str(field), "--out", str(tmp_path / "d.csv"), "--annotated", str(tmp_path / "fields")]) == 2
    assert main(["explain", str(field), "--out", str(field)]) == 2
    assert upload.read_bytes() == content and {p.name: p.read_bytes() for p in field.parent.iterdir()} == fields


def test_an_output_file_that_cannot_be_written_is_said_before_anything_is_stored(trained_models_dir, tmp_path,
                                                                                 capsys):
    """/proc exists, so its folder was "made"; the analysis was stored done, then the CSV failed."""
    from bloodcells.store import open_store
    from bloodcells.synthetic import write_cell_zip

    upload = write_cell_zip(tmp_path / "in.zip", {"LYT": 2}, size=32)
    assert main(["classify", str(upload), "--models", str(trained_models_dir), "--out", "/proc/cells.csv"]) == 2
    assert "/proc/cells.csv: cannot be written" in capsys.readouterr().err
    assert open_store().list_analyses() == []


def test_a_mistyped_input_leaves_no_failed_analysis_behind(trained_models_dir, tmp_path, capsys):
    """`classify nothere.zip` said so, and History listed a failed "nothere.zip" analysis."""
    from bloodcells.store import open_store

    out = ["--out", str(tmp_path / "out.csv")]
    assert main(["classify", str(tmp_path / "nothere.zip"), "--models", str(trained_models_dir), *out]) == 2
    assert main(["detect", str(tmp_path / "nothere"), "--no-typing", *out]) == 2
    assert capsys.readouterr().err.count("no such file or folder") == 2
    assert open_store().list_analyses() == []


def test_a_terminated_run_marks_its_analysis_failed(trained_models_dir, tmp_path, monkeypatch, capsys):
    """`kill` or `timeout` (SIGTERM) left the analysis "running" for a day: undeletable in History."""
    import os
    import signal
    import time

    from bloodcells.classify import TreeClassifier
    from bloodcells.store import open_store
    from bloodcells.synthetic import write_cell_zip

    def killed(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(TreeClassifier, "classify_images", killed)
    upload = write_cell_zip(tmp_path / "in.zip", {"LYT": 2}, size=32)
    assert main(["classify", str(upload), "--models", str(trained_models_dir)]) == 128 + signal.SIGTERM
    assert "terminated" in capsys.readouterr().err
    [analysis] = open_store().list_analyses()
    assert analysis.status == "failed"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was


def test_a_malformed_tree_file_is_one_line_and_exit_status_2(tmp_path, capsys):
    """`--tree bad.yaml` ended in PyYAML's traceback and exit status 1."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: [")
    assert main(["tree", "show", "--tree", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bloodcells tree: error: {bad}, line 1, column 5: not a valid YAML file")
    assert err.count("\n") == 1


def test_tree_refuses_a_word_its_action_does_not_take(capsys):
    """`tree show extra` ignored the extra word; `tree resolve` without a label is refused as well."""
    for argv in (["tree", "show", "extra"], ["tree", "resolve"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: extra" in err and "required: label" in err


def test_classify_prints_its_finished_progress_bar_once_and_counts_in_words(trained_models_dir, tmp_path, capsys):
    """The bar of a run that reported its end twice was drawn at its start, at each report and at
    its close: `24/24 [00:00<?, ?cells/s]` four times. One cell was "1 cells"."""
    from bloodcells.synthetic import write_cell_zip

    upload = write_cell_zip(tmp_path / "in.zip", {"LYT": 12, "EOS": 12}, size=32)
    assert main(["classify", str(upload), "--models", str(trained_models_dir), "--no-store",
                 "--out", str(tmp_path / "cells.csv")]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("24/24") == 1 and printed.err.endswith("\n")
    one = write_cell_zip(tmp_path / "one.zip", {"LYT": 1}, size=32)
    assert main(["classify", str(one), "--models", str(trained_models_dir), "--no-store"]) == 0
    assert "\n1 cell: " in "\n" + capsys.readouterr().out


def test_classify_says_a_multi_page_files_later_pages_apart_from_the_files_skipped(trained_models_dir, tmp_path,
                                                                                       capsys):
    """"skipped cells.tif (pages 2-2): ..." was said of a file whose first page was classified."""
    from bloodcells.synthetic import cell_image

    folder = tmp_path / "cells"
    folder.mkdir()
    cell_image("LYT", 1, 32).save(folder / "cells.tif", save_all=True, append_images=[cell_image("EOS", 2, 32)])
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["classify", str(folder), "--models", str(trained_models_dir), "--no-store"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed if line.startswith(("note", "skipped"))] == [
        "skipped broken.png", "note cells.tif (page 2)"]
    assert "\n1 cell: " in "\n" + "\n".join(printed)


def test_train_attributes_prints_each_attribute_once(trained_models_dir, tmp_path, capsys):
    """Each attribute's accuracy was logged as it was fitted, then printed again in a table."""
    from test_morphology import write_attribute_table

    table = write_attribute_table(tmp_path / "data", per_type=8)
    assert main(["train-attributes", "--csv", str(table), "--models", str(trained_models_dir),
                 "--out", str(tmp_path / "head"), "--test-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert sum(line.startswith("nucleus_shape") for line in printed.splitlines()) == 1
    assert "mean accuracy" in printed


def test_explain_names_the_option_a_method_does_not_use(tmp_path, capsys):
    """It said "gradcam does not use n_steps", the library's name, for --steps."""
    from bloodcells.synthetic import cell_image

    cell_image("LYT", 1, 32).save(tmp_path / "cell.png")
    assert main(["explain", str(tmp_path / "cell.png"), "--out", str(tmp_path / "maps.png"), "--steps", "8"]) == 2
    assert "gradcam does not use --steps" in capsys.readouterr().err


def test_evaluate_help_groups_the_options_that_only_its_experiments_use(capsys):
    """Some 30 training options were listed among evaluate's own, nothing saying they only shape --compare
    and --cross-site."""
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    described = capsys.readouterr().out.partition("\noptions:")[2]  # after the usage line, which names them all
    own, _, experiments = described.partition("training (only with --compare or --cross-site):")
    assert "--models" in own and "--epochs" not in own
    assert all(option in experiments for option in ("--backbones", "--modes", "--epochs", "--lr", "--shared-trunk"))


def test_output_piped_to_a_reader_that_stops_early_is_no_error():
    """`bloodcells tree show | head -1` said "error: [Errno 32] Broken pipe" and exited 2."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "bloodcells", "tree", "show"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line
    error = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0 and "Broken pipe" not in error, error
