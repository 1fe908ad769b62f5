"""Dockerfile and docker-compose.yml: Docker cannot run here, so the files are parsed and checked to
reference what really exists (the app's entry point, a real `bloodcells` command, the health path,
the requirements file, a non-root user, the data volume, a database URL the Store accepts).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _all(keyword: str) -> list[str]:
    return [rest for word, rest in _instructions() if word == keyword]


def _args() -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in _all("ARG") if "=" in arg)


def _exec_form(keyword: str) -> list[str]:
    import json

    (value,) = _all(keyword)
    return json.loads(value)


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
               for pattern in patterns for prefix in prefixes)


def test_cpu_base_by_default_cuda_by_argument():
    args = _args()
    assert _all("FROM") == ["${BASE_IMAGE}"]
    base = args["BASE_IMAGE"]
    assert base.startswith("python:") and "cuda" not in base
    version = tuple(int(part) for part in re.match(r"python:(\d+)\.(\d+)", base).groups())
    required = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text()).groups()
    assert version >= tuple(int(part) for part in required)
    assert args["TORCH_INDEX"].endswith("/whl/cpu")  # CPU torch wheels unless a CUDA index is given
    header = (ROOT / "Dockerfile").read_text().split("ARG BASE_IMAGE")[0]
    assert "--build-arg BASE_IMAGE=nvidia/cuda" in header and "--build-arg TORCH_INDEX=" in header


def test_installs_the_real_requirements_and_the_package():
    copied = " ".join(_all("COPY"))
    assert "requirements.txt" in copied and "pyproject.toml" in copied
    runs = " ".join(_all("RUN"))
    assert "-r requirements.txt" in runs and '--extra-index-url "${TORCH_INDEX}"' in runs
    assert "pip install --no-deps --no-build-isolation -e ." in runs  # as `make install` does
    for needed in ("requirements.txt", "pyproject.toml", "app.py", "bloodcells", "pages", "ui", "models"):
        assert (ROOT / needed).exists(), needed
        assert not _ignored(needed), f"{needed} must reach the image"
    for secret in (".streamlit/secrets.toml", ".venv", "data", ".git", ".env", "models/classifier/default.training"):
        assert _ignored(secret), f"{secret} must stay out of the image"


def test_requirements_bring_a_setuptools_that_builds_the_package():
    """The editable install runs without build isolation: the venv's own setuptools builds it, and a
    fresh Python 3.11 venv has 65.x, which rejects pyproject's SPDX license string (PEP 639: >= 77)."""
    assert re.search(r'^license = "[^"]+"$', (ROOT / "pyproject.toml").read_text(), re.M)
    pinned = re.search(r"^setuptools==(\d+)\.", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned and int(pinned.group(1)) >= 77


def test_runs_as_a_non_root_user_that_it_creates():
    (user,) = _all("USER")
    assert user not in {"root", "0"}
    assert re.search(rf"useradd\b[^&]*\b{user}\b", " ".join(_all("RUN")))
    order = [word for word, _ in _instructions()]
    assert order.index("USER") > max(i for i, word in enumerate(order) if word == "RUN")  # nothing runs as root after


def test_command_uses_real_entry_points():
    from bloodcells.cli import _load_commands, build_parser

    command = _exec_form("CMD")
    assert command[:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in command[2].split("&&")]
    assert steps[0][0] == "bloodcells"
    _load_commands()
    parsed = build_parser().parse_args(steps[0][1:])  # `bloodcells db upgrade` is a real command
    assert (parsed.command, parsed.action) == ("db", "upgrade")
    serve = steps[1]
    assert serve[:3] == ["exec", "streamlit", "run"]
    assert (ROOT / serve[3]).is_file() and serve[3] == "app.py"
    options = dict(zip(serve[4::2], serve[5::2], strict=False))
    assert options["--server.address"] == "0.0.0.0"
    assert options["--server.port"] in _all("EXPOSE")


def test_healthcheck_asks_streamlit_health_on_the_served_port():
    (health,) = _all("HEALTHCHECK")
    (port,) = _all("EXPOSE")
    assert f"http://127.0.0.1:{port}/_stcore/health" in health
    assert "curl" in health and "curl" in " ".join(_all("RUN"))


def test_data_folder_is_the_volume():
    env = " ".join(_all("ENV"))
    assert "BLOODCELLS_DATA_DIR=/data" in env
    assert _all("VOLUME") == ['["/data"]']


# -- docker-compose.yml ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _defaults(value: str) -> str:
    """``${NAME:-default}`` -> ``default``, as compose substitutes an unset variable."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_has_mysql_8_with_a_volume_and_a_healthcheck(compose):
    db = compose["services"]["db"]
    assert re.fullmatch(r"mysql:8(\.\d+)*", db["image"])
    volume, target = db["volumes"][0].split(":")
    assert target == "/var/lib/mysql" and volume in compose["volumes"]
    assert "mysqladmin ping" in " ".join(db["healthcheck"]["test"])


def test_compose_app_reaches_that_database(compose):
    from sqlalchemy.engine import make_url

    from bloodcells.store import Store

    app, db = compose["services"]["app"], compose["services"]["db"]
    assert app["build"] == "."
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    url = make_url(_defaults(app["environment"]["BLOODCELLS_DATABASE_URL"]))
    assert url.drivername == "mysql+pymysql" and url.host == "db"
    assert url.database == db["environment"]["MYSQL_DATABASE"]
    assert url.username == db["environment"]["MYSQL_USER"]
    assert url.password == _defaults(db["environment"]["MYSQL_PASSWORD"])
    store = Store(url.render_as_string(hide_password=False))  # the driver is installed; nothing connects yet
    assert store.backend == "mysql"
    store.engine.dispose()
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^cryptography==", requirements, re.M)  # PyMySQL + MySQL 8's caching_sha2_password


def test_compose_app_serves_and_keeps_data_in_a_volume(compose):
    app = compose["services"]["app"]
    (port,) = _all("EXPOSE")
    assert any(mapping.endswith(f":{port}") for mapping in app["ports"])
    volume, target = app["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]


def test_operations_doc_covers_the_deployment():
    doc = (ROOT / "docs" / "operations.md").read_text()
    for needed in ("docker compose up", "docker build", "BASE_IMAGE", "BLOODCELLS_DATABASE_URL", "/_stcore/health",
                   "bloodcells db upgrade", "backup"):
        assert needed in doc, needed
