"""``bloodcells analyses``: a command-line user finds the id ``report`` takes (it said "see History")."""

from datetime import timedelta

import pytest

from bloodcells.cli import main
from bloodcells.store import Analysis, PredictionRow, open_store


def test_analyses_lists_the_newest_first_and_finds_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLOODCELLS_DATA_DIR", str(tmp_path / "data"))
    assert main(["analyses"]) == 0 and capsys.readouterr().out.startswith(
        f"no analyses yet (no database at {tmp_path / 'data' / 'bloodcells.db'}: nothing was ever stored there")
    assert not (tmp_path / "data").exists()  # nothing made by a command that reads
    store = open_store()
    assert main(["analyses"]) == 0 and capsys.readouterr().out == "no analyses yet\n"
    marrow = store.start_analysis("MÜLLER Probe.zip", "classification")
    store.finish_analysis(marrow, predictions=[PredictionRow(f"c{n}.png", "LYT", "ALL/LYM/LYT", 0.5, {}, n == 0)
                                               for n in range(3)])
    killed = store.start_analysis("killed.zip", "detection")
    with store.session() as session:  # its process fell silent: listed as interrupted
        session.get(Analysis, killed).heartbeat_at -= timedelta(minutes=10)
    assert main(["analyses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"#{killed}", f"#{marrow}"]
    assert lines[0].split("\t")[2] == "detection"
    assert lines[0].split("\t")[3].startswith("failed (interrupted: the process storing it stopped")
    assert lines[1].split("\t")[2:] == ["classification", "done", "3, 1 to review", "MÜLLER Probe.zip"]
    assert main(["analyses", "--search", "muller"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == [f"#{marrow}"]
    assert main(["analyses", "--search", "nothing like it", "--kind", "detection"]) == 0
    assert capsys.readouterr().out == "no detection analyses match 'nothing like it'\n"
    with pytest.raises(SystemExit, match="2"):
        main(["analyses", "--limit", "0"])
    assert "--limit: 0: give a whole number from 1 up" in capsys.readouterr().err
