"""`make run` on the embedded default serves the app at 127.0.0.1."""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(port: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    """The server's health answer; its output (``log``) if it exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the server did not become healthy in time")


@pytest.mark.slow
def test_make_run_serves_the_home_page(tmp_path):
    port = free_port()
    env = {**os.environ, "BLOODCELLS_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_health(port, process, log) == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200 and "<html" in response.read().decode().lower()
        assert (tmp_path / "data" / "bloodcells.db").exists()  # `make run` created the schema
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as the kernel lists them) of the sockets listening on ``port``."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                addresses.add(address)
    return addresses


@pytest.mark.slow
def test_a_plain_streamlit_run_serves_this_machine_only(tmp_path):
    """README: Streamlit binds 127.0.0.1 by default. Started without --server.address it listened on
    every interface (and looked up the machine's external address)."""
    port = free_port()
    env = {**os.environ, "BLOODCELLS_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "streamlit"), "run", "app.py", "--server.port",
                                    str(port)], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        assert wait_for_health(port, process, log) == "ok"
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing on 0.0.0.0 or ::
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
