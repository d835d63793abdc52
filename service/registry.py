"""Manifest -> verified onnxruntime sessions, one per graph, opened once per worker.

`Registry.open(root)` reads `manifest.json` and checks every file's sha256; it
refuses to start with a `ManifestError` naming the first missing or tampered
file. Sessions open on a graph's first use (or all at start with
`preload=True`, `AE_PRELOAD=1`): a worker that serves a few graphs pays memory
for those only (all 22 shipped graphs: +71 MB, `python -m benchmarks.memory`).
Opening re-reads the file and builds the session from the very bytes it hashes
again, so a file swapped after start is refused, never loaded.

Memory: every session allocates activations from one arena shared by the
process (`session.use_env_allocators`) instead of one arena each: an arena
grows to the largest call its session ever ran and never shrinks, so 22
private arenas keep 22 peaks (all graphs at batch 256: 638 -> 212 MB).

Threads: each session gets `threads` intra-op threads (the service: 1, and its
batcher runs calls on several threads at once) and one inter-op thread; the
caller keeps workers x threads within the cores (`service.settings`). Graph
optimisation is ORT_ENABLE_ALL. Spinning is off: on a small machine an idle
spinning pool steals the CPU the event loop needs to parse the next request.

Lookups raise the domain errors `UnknownDataset` / `UnknownModel`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import UnknownDataset, UnknownModel
from service.manifest import (
    ChecksumMismatch,
    GraphFile,
    Manifest,
    ManifestError,
    MissingModelFile,
    ModelEntry,
    load_manifest,
    verify_files,
)

log = logging.getLogger(__name__)


def session_options(threads: int) -> ort.SessionOptions:
    """The onnxruntime options every session of the service uses."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3  # errors only
    _register_shared_arena()
    return options


_ARENA_LOCK = threading.Lock()
_arena_registered = False


def _register_shared_arena() -> None:
    """Register the process-wide CPU arena that sessions opt into (once per process)."""
    global _arena_registered
    with _ARENA_LOCK:
        if not _arena_registered:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, None)
            _arena_registered = True


@dataclass
class Graph:
    """One ONNX graph of one model; its session opens on first use (see module docstring)."""

    entry: ModelEntry
    role: str
    spec: GraphFile
    path: Path
    options: ort.SessionOptions
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    _session: ort.InferenceSession | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.input_names = [t.name for t in self.spec.inputs]
        self.output_names = [t.name for t in self.spec.outputs]

    @property
    def is_open(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session, opened (verified again) on first access."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._open()
        return self._session

    def _open(self) -> ort.InferenceSession:
        what = f"{self.entry.dataset}/{self.entry.name} {self.role}"
        data = _read_verified(self.path, self.spec, what)
        try:
            session = _session_from_bytes(data, self.options)
        except Exception as err:
            raise ManifestError(f"{self.path}: onnxruntime cannot load it: {err}") from err
        got_in = sorted(i.name for i in session.get_inputs())
        got_out = sorted(o.name for o in session.get_outputs())
        if got_in != sorted(self.input_names) or got_out != sorted(self.output_names):
            raise ManifestError(
                f"{self.path}: graph signature {got_in} -> {got_out} differs "
                f"from the manifest's {sorted(self.input_names)} -> {sorted(self.output_names)}"
            )
        log.info("opened %s (%s/%s %s)", self.path.name, self.entry.dataset, self.entry.name,
                 self.role)
        return session

    @property
    def label_input(self) -> str | None:
        """Name of the int64 class-label input (cvae), if any."""
        return next((t.name for t in self.spec.inputs if t.dtype == "int64"), None)

    @property
    def data_input(self) -> str:
        """Name of the float input (image or latent)."""
        return next(t.name for t in self.spec.inputs if t.dtype == "float32")

    def output(self, preferred: str, position: int = 0) -> str:
        """An output name: `preferred` if the graph has it, else the one at `position`."""
        return preferred if preferred in self.output_names else self.output_names[position]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns every output by name."""
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values, strict=True))


def verify_models(root: Path) -> Manifest:
    """Load the manifest and check every file's sha256; ManifestError naming the bad file."""
    manifest = load_manifest(Path(root))
    verify_files(manifest, Path(root))
    return manifest


class Registry:
    """The served models: manifest entries and their open graphs, keyed by dataset and name."""

    def __init__(self, manifest: Manifest, root: Path, graphs: dict[tuple[str, str, str], Graph]):
        self.manifest = manifest
        self.root = root
        self._graphs = graphs

    @classmethod
    def open(cls, root: Path, threads: int = 1, preload: bool = False) -> Registry:
        """Load `root/manifest.json` and verify every file (ManifestError if unsafe); with
        `preload`, also open every session now rather than on first use."""
        root = Path(root)
        # Opening a session checks its file: with preload every file is checked that way.
        manifest = load_manifest(root) if preload else verify_models(root)
        options = session_options(threads)
        graphs = {
            (entry.dataset, entry.name, role): Graph(entry, role, spec, root / spec.path, options)
            for entry in manifest.models
            for role, spec in entry.files.items()
        }
        if preload:
            for graph in graphs.values():
                graph.session  # noqa: B018 (opens it)
        log.info(
            "verified %d graphs of %d models from %s (%s; %d intra-op threads each)",
            len(graphs),
            len(manifest.models),
            root,
            "opened" if preload else "sessions open on first use",
            threads,
        )
        return cls(manifest, root, graphs)

    @property
    def datasets(self) -> list[str]:
        """Datasets with at least one served model."""
        return sorted({m.dataset for m in self.manifest.models})

    def entry(self, dataset: str, name: str, field: str = "model") -> ModelEntry:
        """The manifest entry of a served model; UnknownDataset / UnknownModel otherwise."""
        if dataset not in self.datasets:
            raise UnknownDataset(
                "dataset", f"unknown dataset {dataset!r}; served: {', '.join(self.datasets)}"
            )
        try:
            return self.manifest.get(dataset, name)
        except KeyError:
            served = sorted(m.name for m in self.manifest.models if m.dataset == dataset)
            raise UnknownModel(
                field, f"no model {name!r} for dataset {dataset!r}; served: {', '.join(served)}"
            ) from None

    def graph(self, dataset: str, name: str, role: str, field: str = "model") -> Graph:
        """The open graph of one model's role (`encoder`, `decoder` or `model`)."""
        entry = self.entry(dataset, name, field)
        try:
            return self._graphs[(dataset, name, role)]
        except KeyError:
            raise UnknownModel(field, f"model {entry.name!r} has no {role} graph") from None


def _session_from_bytes(data: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    """A session built from exactly these bytes.

    Handed a path, onnxruntime holds ~2.3 MB per session less than handed the same bytes
    (22 shipped graphs: 71 vs 127 MB). So on Linux the verified bytes go into an
    anonymous in-memory file (memfd) that onnxruntime opens by path and that vanishes
    when closed: the path's memory figure, and still no window in which the file on
    disk could be swapped between the hash and the load.
    """
    if not hasattr(os, "memfd_create"):
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    fd = os.memfd_create("verified-model.onnx", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as file:
            file.write(data)
        return ort.InferenceSession(f"/proc/self/fd/{fd}", options,
                                    providers=["CPUExecutionProvider"])
    finally:
        os.close(fd)


def _read_verified(path: Path, spec: GraphFile, what: str) -> bytes:
    """The file's bytes, if their sha256 is the manifest's; MissingModelFile/ChecksumMismatch."""
    if not path.is_file():
        raise MissingModelFile(f"{path}: missing ({what})")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ChecksumMismatch(
            f"{path}: sha256 {digest} does not match the manifest's {spec.sha256}"
        )
    return data
