"""Service fixtures: a real `bentoml serve` on a free loopback port, and reference sessions.

The server runs the tiny model set with small limits so that every limit can be
hit cheaply; `start_server` is reused for the API-key server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMITS = {
    "AE_MAX_BATCH": "256",
    "AE_MAX_N": "64",
    "AE_MAX_IMAGE_SIDE": "64",
    "AE_MAX_PIXELS": str(1 << 20),
    "AE_MAX_REQUEST_BYTES": str(4 << 20),
}


@dataclass
class Server:
    url: str
    models_dir: Path
    log: Path
    process: subprocess.Popen

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def alive(self) -> bool:
        return self.process.poll() is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models_dir: Path, workdir: Path, **env: str) -> Server:
    """`bentoml serve` from the repo root; returns once /readyz answers 200."""
    port = free_port()
    log = workdir / f"bentoml-{port}.log"
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AE_")},
        **LIMITS,
        "AE_MODELS_DIR": str(models_dir),
        "AE_WORKERS": "1",
        "BENTOML_HOME": str(workdir / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "True",
        **env,
    }
    command = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches the workers
        )
    server = Server(f"http://127.0.0.1:{port}", models_dir, log, process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"bentoml serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"bentoml serve not ready in 90 s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=5)


@pytest.fixture(scope="session")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service over the tiny models, no API key."""
    running = start_server(tiny_models_dir, tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def keyed_server(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The same service with AE_API_KEY set (see test_auth.py for the key)."""
    key = "test-key-0123456789abcdef"
    running = start_server(tiny_models_dir, tmp_path_factory.mktemp("keyed"), AE_API_KEY=key)
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


class Reference:
    """Direct onnxruntime runs of the served graphs, to compare the service against."""

    def __init__(self, models_dir: Path):
        from service.manifest import load_manifest

        self.root = models_dir
        self.manifest = load_manifest(models_dir)
        self._sessions: dict[str, ort.InferenceSession] = {}

    def run(self, dataset: str, model: str, role: str, *inputs: np.ndarray) -> list[np.ndarray]:
        spec = self.manifest.get(dataset, model).files[role]
        if spec.path not in self._sessions:
            self._sessions[spec.path] = ort.InferenceSession(str(self.root / spec.path))
        feeds = {t.name: x for t, x in zip(spec.inputs, inputs, strict=True)}
        return self._sessions[spec.path].run(None, feeds)


@pytest.fixture(scope="session")
def reference(tiny_models_dir: Path) -> Reference:
    return Reference(tiny_models_dir)


def pytest_configure(config: pytest.Config) -> None:
    """Silence deprecation chatter from BentoML's own dependencies."""
    for pattern in (
        "ignore:GitWildMatchPattern:DeprecationWarning",
        "ignore:Using `httpx`",
        "ignore:The `__get_pydantic_core_schema__`:DeprecationWarning",
    ):
        config.addinivalue_line("filterwarnings", pattern)
