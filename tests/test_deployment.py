"""Dockerfile and docker-compose.yml. The Dockerfile is parsed into its instructions and checked for
what the image must do: a CPU base unless told otherwise, requirements installed before the source
is copied (so a code change rebuilds from there), real entry points, a non-root user, a health check
on the served port and the offline environment; where a Docker engine answers, the image is also
built and inspected. docker-compose.yml is checked to reference what really exists.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import string
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# What keeps ultralytics and albumentations from going online (as
# bloodcells.settings.apply_offline_environment sets them outside the image). HF_HUB_OFFLINE is left
# to bloodcells, which sets it unless BLOODCELLS_ALLOW_DOWNLOADS=1.
OFFLINE = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "NO_ALBUMENTATIONS_UPDATE": "1"}


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile as Docker reads it: comment lines dropped (also
    inside a continued instruction), a line ending in a backslash continued on the next."""
    found, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def _all(keyword: str) -> list[str]:
    return [arguments for word, arguments in _instructions() if word == keyword]


def _position(keyword: str, matches=lambda _arguments: True) -> int:
    """Index of the only instruction ``keyword`` whose arguments ``matches``."""
    (index,) = [n for n, (word, arguments) in enumerate(_instructions()) if word == keyword and matches(arguments)]
    return index


def _variables(keyword: str) -> dict[str, str]:
    """ARG defaults or ENV values: every ``NAME=value`` of every such instruction."""
    return dict(pair.split("=", 1) for arguments in _all(keyword) for pair in shlex.split(arguments) if "=" in pair)


def _commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ``&&``, ``||`` and ``;``), each as its words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands = [[]]
    for token in lexer:
        if token in {"&&", "||", ";"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def _pip_installs(arguments: str) -> list[list[str]]:
    """The ``pip install`` commands of a RUN, each without its ``pip install`` words."""
    return [words[words.index("install") + 1:] for words in _commands(arguments)
            if Path(words[0]).name == "pip" and "install" in words]


def _copied(arguments: str) -> list[str]:
    """The sources a COPY copies (its --flags and destination left out)."""
    words = [word for word in shlex.split(arguments) if not word.startswith("--")]
    return words[:-1]


def _exposed_port() -> str:
    (port,) = _all("EXPOSE")
    return port


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
               for pattern in patterns for prefix in prefixes)


def test_cpu_base_by_default_cuda_by_argument():
    args = _variables("ARG")
    (base,) = _all("FROM")
    image = string.Template(base).substitute(args)  # the build's default, --build-arg BASE_IMAGE changes it
    assert image.startswith("python:") and "cuda" not in image
    assert _position("ARG", lambda a: a.startswith("BASE_IMAGE=")) < _position("FROM")
    version = tuple(int(part) for part in re.match(r"python:(\d+)\.(\d+)", image).groups())
    required = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text()).groups()
    assert version >= tuple(int(part) for part in required)
    # CPU torch wheels unless a CUDA index is given; declared after FROM, where the RUN steps see it
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    assert _position("ARG", lambda a: a.startswith("TORCH_INDEX=")) > _position("FROM")
    (requirements,) = [words for run in _all("RUN") for words in _pip_installs(run) if "-r" in words]
    assert requirements[requirements.index("--extra-index-url") + 1] == "${TORCH_INDEX}"


def test_requirements_are_installed_before_the_source_is_copied():
    def installs(*words: str):
        return lambda arguments: any(set(words) <= set(install) for install in _pip_installs(arguments))

    copy_requirements = _position("COPY", lambda a: set(_copied(a)) == {"requirements.txt", "pyproject.toml"})
    install_requirements = _position("RUN", installs("-r", "requirements.txt"))
    copy_source = _position("COPY", lambda a: _copied(a) == ["."])
    install_package = _position("RUN", installs("--no-deps", "--no-build-isolation", "-e", "."))  # as `make install`
    assert copy_requirements < install_requirements < copy_source < install_package
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
    created = [words for run in _all("RUN") for words in _commands(run) if words[0] == "useradd"]
    assert [words[-1] for words in created] == [user]
    order = [word for word, _ in _instructions()]
    # nothing runs as root after it, and the app starts as that user
    assert max(n for n, word in enumerate(order) if word == "RUN") < order.index("USER") < order.index("CMD")
    assert "ENTRYPOINT" not in order


def test_command_uses_real_entry_points():
    from bloodcells.cli import _load_commands, build_parser

    (command,) = _all("CMD")
    shell, flag, script = json.loads(command)  # exec form: no shell around the shell that runs the steps
    assert (shell, flag) == ("sh", "-c")
    migrate, serve = _commands(script)
    assert migrate[0] == "bloodcells"
    _load_commands()
    parsed = build_parser().parse_args(migrate[1:])  # `bloodcells db upgrade` is a real command
    assert (parsed.command, parsed.action) == ("db", "upgrade")
    assert serve[:3] == ["exec", "streamlit", "run"]
    assert serve[3] == "app.py" and (ROOT / serve[3]).is_file()
    options = dict(zip(serve[4::2], serve[5::2], strict=False))
    assert options["--server.address"] == "0.0.0.0"
    assert options["--server.port"] == _exposed_port()


def test_healthcheck_asks_streamlit_health_on_the_served_port():
    (health,) = _all("HEALTHCHECK")
    words = shlex.split(health)
    options, command = words[:words.index("CMD")], " ".join(words[words.index("CMD") + 1:])
    assert all(option.startswith("--") for option in options)
    (curl, *flags, url), failure = _commands(command)
    fails_on_http_errors = any(flag == "--fail" or re.fullmatch(r"-[a-zA-Z]*f[a-zA-Z]*", flag) for flag in flags)
    assert curl == "curl" and fails_on_http_errors and failure == ["exit", "1"]
    address = urlsplit(url)
    assert (address.hostname, str(address.port), address.path) == ("127.0.0.1", _exposed_port(), "/_stcore/health")
    # curl is installed by the apt-get step, which takes its packages from a variable it sets
    (apt,) = [run for run in _all("RUN") if any(words[:2] == ["apt-get", "install"] for words in _commands(run))]
    assert curl in [package for words in _commands(apt) for word in words for package in word.split("=")[-1].split()]


def test_offline_environment_and_the_data_volume():
    env = _variables("ENV")
    assert {name: env.get(name) for name in OFFLINE} == OFFLINE
    assert env["BLOODCELLS_DATA_DIR"] == "/data" and json.loads(_all("VOLUME")[0]) == ["/data"]
    (workdir,) = _all("WORKDIR")
    assert env["BLOODCELLS_MODELS_DIR"] == f"{workdir}/models"  # the shipped models, copied with the source
    # the trees accepted on the server and the pointer to the one in use: in the volume, or an upgrade of the
    # image (a new /app/models) quietly went back to the shipped tree while the database said "accepted"
    assert env["BLOODCELLS_VERSIONS_DIR"].startswith("/data/")


def test_allow_downloads_reaches_the_hub_under_make_and_in_the_image(monkeypatch):
    """The Makefile and the image set HF_HUB_OFFLINE=1 themselves: BLOODCELLS_ALLOW_DOWNLOADS=1 did nothing
    under `make run` or `docker run -e`. bloodcells alone sets it, from that switch."""
    assert "HF_HUB_OFFLINE" not in _variables("ENV")
    environment = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    shown = subprocess.run(["make", "--no-print-directory", "-s", "-f", "Makefile", "-f", "-", "show"], cwd=ROOT,
                           input='show:\n\t@echo "HF_HUB_OFFLINE=[$$HF_HUB_OFFLINE]"\n', capture_output=True,
                           text=True, check=True, env={**environment, "BLOODCELLS_ALLOW_DOWNLOADS": "1"})
    assert shown.stdout.strip() == "HF_HUB_OFFLINE=[]"  # what make's commands (streamlit, bloodcells) start with
    from bloodcells.settings import apply_offline_environment

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("BLOODCELLS_ALLOW_DOWNLOADS", "1")
    apply_offline_environment()
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.delenv("BLOODCELLS_ALLOW_DOWNLOADS")
    apply_offline_environment()
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # offline unless allowed


def test_the_library_caches_go_where_bloodcells_cache_dir_says_under_make_and_in_the_image(tmp_path):
    """The Makefile and the image fixed YOLO_CONFIG_DIR and MPLCONFIGDIR to the project's .cache: with
    BLOODCELLS_CACHE_DIR given, only torch's cache moved, where the README says all of them do."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "BLOODCELLS_CACHE_DIR")}

    def shown(**extra) -> str:
        return subprocess.run(["make", "--no-print-directory", "-s", "-f", "Makefile", "-f", "-", "show"], cwd=ROOT,
                              input='show:\n\t@echo "$$YOLO_CONFIG_DIR $$MPLCONFIGDIR"\n', capture_output=True,
                              text=True, check=True, env={**environment, **extra}).stdout.split()

    assert shown(BLOODCELLS_CACHE_DIR=str(tmp_path)) == [f"{tmp_path}/ultralytics", f"{tmp_path}/matplotlib"]
    assert shown() == [f"{ROOT}/.cache/ultralytics", f"{ROOT}/.cache/matplotlib"]
    assert not {"YOLO_CONFIG_DIR", "MPLCONFIGDIR"} & set(_variables("ENV"))  # bloodcells places them on start


def _docker_engine_problem() -> str | None:
    """Why no Docker engine can build here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        answer = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 60 s"
    if answer.returncode != 0:
        said = (answer.stderr or answer.stdout).strip().splitlines()
        return f"`docker info` failed: {said[-1] if said else f'exit status {answer.returncode}'}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(3600)  # downloads and installs torch and the other requirements
def test_the_image_builds_and_runs_as_described():
    problem = _docker_engine_problem()
    if problem:
        pytest.skip(f"no Docker engine to build the image with ({problem})")
    tag = f"bloodcells-test:{os.getpid()}"
    subprocess.run(["docker", "build", "--tag", tag, str(ROOT)], check=True)
    try:
        inspected = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True, check=True)
        config = json.loads(inspected.stdout)[0]["Config"]
        (user,) = _all("USER")
        assert config["User"] == user
        assert f"{_exposed_port()}/tcp" in config["ExposedPorts"]
        assert "/_stcore/health" in " ".join(config["Healthcheck"]["Test"])
        env = dict(pair.split("=", 1) for pair in config["Env"])
        assert {name: env.get(name) for name in OFFLINE} == OFFLINE and "HF_HUB_OFFLINE" not in env
        # the entry points and curl are installed, and the container runs as that user, not root
        ran = subprocess.run(["docker", "run", "--rm", tag, "sh", "-c", "bloodcells --help >/dev/null "
                              "&& streamlit version && command -v curl && id -u"],
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split()[-1] != "0"
    finally:
        subprocess.run(["docker", "image", "rm", "--force", tag], capture_output=True)


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
    assert any(mapping.endswith(f":{_exposed_port()}") for mapping in app["ports"])
    volume, target = app["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]


def test_operations_doc_covers_the_deployment():
    doc = (ROOT / "docs" / "operations.md").read_text()
    for needed in ("docker compose up", "docker build", "BASE_IMAGE", "BLOODCELLS_DATABASE_URL", "/_stcore/health",
                   "bloodcells db upgrade", "backup"):
        assert needed in doc, needed
