"""Service fixtures: a real `bentoml serve` on a free loopback port, and reference sessions.

The server runs the tiny model set with small limits so that every limit can be
hit cheaply; `start_server` is reused for the API-key server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from benchmarks import servers

LIMITS = {
    "AE_MAX_BATCH": "256",
    "AE_MAX_N": "64",
    "AE_MAX_IMAGE_SIDE": "64",
    "AE_MAX_PIXELS": str(1 << 20),
    "AE_MAX_REQUEST_BYTES": str(4 << 20),
}


@dataclass
class Server:
    """A running service; `benchmarks.servers` starts it (as the README does) and stops it."""

    running: servers.Server

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def log(self) -> Path:
        return self.running.log

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def alive(self) -> bool:
        return self.running.process.poll() is None

    def stop(self) -> None:
        self.running.stop()


def start_server(models_dir: Path, workdir: Path, **env: str) -> Server:
    """`bentoml serve` from the repo root with the test limits; returns once /readyz is 200."""
    return Server(servers.start_service(models_dir, 1, workdir, {**LIMITS, **env}, timeout=90))


@pytest.fixture(scope="session")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service over the tiny models, no API key."""
    running = start_server(tiny_models_dir, tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed_server(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The same service with AE_API_KEY set (see test_auth.py for the key)."""
    key = "test-key-0123456789abcdef"
    running = start_server(tiny_models_dir, tmp_path_factory.mktemp("keyed"), AE_API_KEY=key)
    yield running
    running.stop()


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
