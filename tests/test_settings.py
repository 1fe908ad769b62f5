"""Settings from environment variables: a value bloodcells cannot use is one SettingsError naming its
variable (which pages show as one message and the CLI as exit status 2), and an empty one counts as unset."""

from __future__ import annotations

import re

import pytest

from bloodcells.clock import lab_zone
from bloodcells.settings import Settings, SettingsError, apply_offline_environment


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    """BLOODCELLS_CACHE_DIR naming a file, the library cache variables unset (as on a server's shell)."""
    file = tmp_path / "afile"
    file.write_text("")
    monkeypatch.setenv("BLOODCELLS_CACHE_DIR", str(file))
    for name in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME"):
        monkeypatch.delenv(name, raising=False)  # and put back as they were, after the test sets them
    return file


def test_a_cache_dir_that_is_a_file_is_a_settings_error_naming_it(cache_file):
    """It was a NotADirectoryError traceback from `bloodcells --help` and every page."""
    with pytest.raises(SettingsError, match=rf"^BLOODCELLS_CACHE_DIR={re.escape(str(cache_file))}: the library "
                                            rf"caches cannot be written there \(Not a directory: {re.escape(str(cache_file))}/"):
        apply_offline_environment()


def test_a_yolo_config_dir_of_ones_own_that_cannot_be_written_is_named_as_such(cache_file, monkeypatch, tmp_path):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(cache_file / "ultralytics"))
    monkeypatch.setenv("BLOODCELLS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SettingsError, match=rf"^YOLO_CONFIG_DIR={re.escape(str(cache_file))}/ultralytics: the library"):
        apply_offline_environment()


@pytest.mark.parametrize("zone", ["Europe", "America/Argentina"])
def test_a_folder_of_zones_is_not_a_time_zone(zone, monkeypatch):
    """It was IsADirectoryError on every page, and "[Errno 21] Is a directory" in the CLI, naming no variable."""
    monkeypatch.setenv("BLOODCELLS_TIMEZONE", zone)
    with pytest.raises(SettingsError, match=rf"^BLOODCELLS_TIMEZONE={zone}: not a time zone \(give an IANA name"):
        lab_zone()


@pytest.mark.parametrize("name", ["BLOODCELLS_DATA_DIR", "BLOODCELLS_MODELS_DIR", "BLOODCELLS_VERSIONS_DIR", "BLOODCELLS_CACHE_DIR",
                                  "BLOODCELLS_DATABASE_URL", "BLOODCELLS_ALLOW_DOWNLOADS", "BLOODCELLS_TIMEZONE"])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_variable_counts_as_unset(name, empty, monkeypatch, tmp_path):
    """An empty folder variable was the current folder: a new, empty bloodcells.db appeared wherever a
    command ran, while an empty database URL or time zone counted as unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(name, raising=False)
    unset = Settings.from_env()
    monkeypatch.setenv(name, empty)
    assert Settings.from_env() == unset
    assert tmp_path not in (unset.data_dir, unset.models_dir, unset.cache_dir)


def test_the_cli_and_every_page_say_an_unusable_cache_dir_in_one_message(cache_file, capsys):
    from streamlit.testing.v1 import AppTest

    from bloodcells.cli import main

    assert main(["tree", "show"]) == 2
    assert capsys.readouterr().err.startswith(f"bloodcells: error: BLOODCELLS_CACHE_DIR={cache_file}: ")
    at = AppTest.from_file("../app.py", default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error if "BLOODCELLS_CACHE_DIR" in e.value]


@pytest.mark.parametrize(("value", "allowed"), [("1", True), ("Yes", True), ("on", True), ("true", True), ("0", False),
                                                ("off", False), ("no", False)])
def test_allow_downloads_reads_yes_and_no(value, allowed, monkeypatch):
    monkeypatch.setenv("BLOODCELLS_ALLOW_DOWNLOADS", value)
    assert Settings.from_env().allow_downloads is allowed


@pytest.mark.parametrize("value", ["2", "enabled", "y es"])
def test_allow_downloads_that_is_neither_yes_nor_no_is_refused(value, monkeypatch):
    """=2 or =enabled quietly meant "no": a lab that meant to allow downloads got none, and no word why."""
    monkeypatch.setenv("BLOODCELLS_ALLOW_DOWNLOADS", value)
    with pytest.raises(SettingsError, match=rf"^BLOODCELLS_ALLOW_DOWNLOADS={value}: give 1 or 0"):
        Settings.from_env()
