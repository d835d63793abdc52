"""Manifest -> verified onnxruntime sessions, one per graph, opened once per worker.

`Registry.open(root)` reads `manifest.json`, reads each file once, checks its
sha256 and builds the session from those very bytes (so a file swapped after
the check is never loaded); it refuses to start with a `ManifestError` naming
the first missing or tampered file.

Threads: each session gets `threads` intra-op threads and one inter-op thread;
the caller picks `threads` so that workers x threads never exceeds the cores
(`service.settings`). Graph optimisation is ORT_ENABLE_ALL. Spinning is off:
on a small machine an idle spinning pool steals the CPU the event loop needs
to parse the next request.

Lookups raise the domain errors `UnknownDataset` / `UnknownModel`.
"""

from __future__ import annotations

import hashlib
import logging
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
    options.log_severity_level = 3  # errors only
    return options


@dataclass
class Graph:
    """One ONNX graph of one model and its open session."""

    entry: ModelEntry
    role: str
    spec: GraphFile
    session: ort.InferenceSession
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

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
    def open(cls, root: Path, threads: int = 1) -> Registry:
        """Load `root/manifest.json`, then verify and open every graph; ManifestError if unsafe."""
        root = Path(root)
        manifest = load_manifest(root)
        options = session_options(threads)
        graphs: dict[tuple[str, str, str], Graph] = {}
        for entry in manifest.models:
            for role, spec in entry.files.items():
                graphs[(entry.dataset, entry.name, role)] = _open_graph(
                    entry, role, spec, root, options
                )
        log.info(
            "opened %d graphs of %d models from %s (%d intra-op threads each)",
            len(graphs),
            len(manifest.models),
            root,
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


def _open_graph(
    entry: ModelEntry, role: str, spec: GraphFile, root: Path, options: ort.SessionOptions
) -> Graph:
    path = root / spec.path
    if not path.is_file():
        raise MissingModelFile(f"{path}: missing ({entry.dataset}/{entry.name} {role})")
    data = path.read_bytes()  # hashed and loaded from the same bytes: one read per file
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ChecksumMismatch(
            f"{path}: sha256 {digest} does not match the manifest's {spec.sha256}"
        )
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ManifestError(f"{path}: onnxruntime cannot load it: {err}") from err
    graph = Graph(entry=entry, role=role, spec=spec, session=session)
    declared_in = sorted(t.name for t in spec.inputs)
    declared_out = sorted(t.name for t in spec.outputs)
    if sorted(graph.input_names) != declared_in or sorted(graph.output_names) != declared_out:
        raise ManifestError(
            f"{path}: graph signature {graph.input_names} -> {graph.output_names} differs "
            f"from the manifest's {declared_in} -> {declared_out}"
        )
    return graph
