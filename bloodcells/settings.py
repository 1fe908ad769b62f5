"""Where things live and the offline environment, read from environment variables.

Every setting has an environment variable (documented in the README) and a default that works
on a fresh clone: an embedded SQLite file under ``data/`` and the models shipped in ``models/``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]


def recorded_path(path: str | Path) -> str:
    """How a trained tree records a data folder it was trained on, so that the record names the same
    folder from any working directory: relative to the project folder where it lies beside the project
    (a clone and its ``../shared`` move together), absolute elsewhere."""
    resolved = Path(path).resolve()
    return os.path.relpath(resolved, PROJECT_DIR) if resolved.is_relative_to(PROJECT_DIR.parent) else str(resolved)


def recorded_folder(recorded: str | Path) -> Path:
    """The folder a record of ``recorded_path`` names (a relative one from the project folder)."""
    return (PROJECT_DIR / recorded).resolve()


class SettingsError(ValueError):
    """An environment variable holds a value bloodcells cannot use (the message names it)."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    models_dir: Path
    # the trees accepted here and the pointer to the one in use: the server's state, kept apart from what
    # ships in models_dir when that is replaced on an upgrade (a container's image)
    versions_dir: Path
    cache_dir: Path
    database_url: str
    allow_downloads: bool
    timezone: str  # the lab's, an IANA name: how times are shown and dates filtered (bloodcells.clock)

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_variable("BLOODCELLS_DATA_DIR", PROJECT_DIR / "data")).resolve()
        models_dir = Path(_variable("BLOODCELLS_MODELS_DIR", PROJECT_DIR / "models")).resolve()
        return cls(
            data_dir=data_dir,
            models_dir=models_dir,
            versions_dir=Path(_variable("BLOODCELLS_VERSIONS_DIR", models_dir / "classifier")).resolve(),
            cache_dir=Path(_variable("BLOODCELLS_CACHE_DIR", PROJECT_DIR / ".cache")).resolve(),
            database_url=_variable("BLOODCELLS_DATABASE_URL", f"sqlite:///{data_dir / 'bloodcells.db'}"),
            allow_downloads=_switch("BLOODCELLS_ALLOW_DOWNLOADS", default=False),
            timezone=_variable("BLOODCELLS_TIMEZONE", "UTC"),
        )


SWITCH_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                 "off": False}


def _switch(name: str, default: bool) -> bool:
    """A yes/no variable; a value that is neither is refused (BLOODCELLS_ALLOW_DOWNLOADS=2 or =enabled
    quietly meant "no", and a lab that meant to allow downloads was left wondering why none came)."""
    value = _variable(name, "1" if default else "0").lower()
    if value not in SWITCH_VALUES:
        raise SettingsError(f"{name}={os.environ[name].strip()}: give 1 or 0 (also true/false, yes/no, on/off)")
    return SWITCH_VALUES[value]


def _variable(name: str, default: str | Path) -> str:
    """Environment variable ``name`` without surrounding blanks, or ``default`` when it is unset or blank:
    ``NAME=`` (a shell, an env file, compose's ``${NAME:-}``) means unset for every variable. An empty
    folder variable read as the current folder and put a new, empty database there."""
    return os.environ.get(name, "").strip() or str(default)


def settings() -> Settings:
    return Settings.from_env()


def apply_offline_environment(current: Settings | None = None) -> None:
    """Set the variables that keep ultralytics, timm/huggingface and albumentations offline.

    Must run before those libraries are imported: ultralytics reads its settings and sets
    OMP_NUM_THREADS=1 at import when it is unset, and would download Arial.ttf on the first
    train unless the font is already in its config dir. Values the user set are kept.
    """
    current = current or settings()
    yolo_dir = current.cache_dir / "ultralytics"
    defaults = {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "YOLO_CONFIG_DIR": str(yolo_dir),
        "MPLCONFIGDIR": str(current.cache_dir / "matplotlib"),
        "OMP_NUM_THREADS": str(os.cpu_count() or 1),
        "TORCH_HOME": str(current.cache_dir / "torch"),
    }
    if not current.allow_downloads:
        defaults["HF_HUB_OFFLINE"] = "1"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    try:
        _install_yolo_font(config_dir)
    except OSError as error:  # a file, or a folder this user may not write
        named = f"BLOODCELLS_CACHE_DIR={current.cache_dir}" if config_dir == yolo_dir else f"YOLO_CONFIG_DIR={config_dir}"
        raise SettingsError(f"{named}: the library caches cannot be written there ({error.strerror}: "
                            f"{error.filename}); give a folder bloodcells may write in") from error


def _install_yolo_font(config_dir: Path) -> None:
    """Copy matplotlib's DejaVu Sans to where ultralytics looks for Arial, so it never downloads one."""
    font_dir = config_dir / "Ultralytics"
    targets = [font_dir / "Arial.ttf", font_dir / "Arial.Unicode.ttf"]
    if all(t.exists() for t in targets):
        return
    font_dir.mkdir(parents=True, exist_ok=True)  # before matplotlib, which warns of an unusable MPLCONFIGDIR
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for target in targets:
        if not target.exists():
            shutil.copyfile(source, target)
