"""The contract between training and serving: `exported_models/manifest.json`.

Training writes it (``training.export``), the service reads and trusts it only
after checking every file's sha256. Standard library + pydantic only: this module
is imported on both sides and must never pull torch or onnxruntime in.

Layout on disk::

    exported_models/
        manifest.json
        mnist/ae.encoder.onnx, mnist/ae.decoder.onnx, mnist/denoiser.onnx, ...
        mnist/denoiser.float32.onnx   (the float32 export of an int8 graph: not served)
        fashion-mnist/...

Graph signatures (all float32 NCHW pixels in [0,1] unless said otherwise):

    ae        encoder  image[N,1,28,28] -> latent[N,d]
              decoder  latent[N,d] -> image[N,1,28,28]
    vae/vae2d encoder  image[N,1,28,28] -> mean[N,d], logvar[N,d]
              decoder  latent[N,d] -> image[N,1,28,28] (Bernoulli probabilities),
                                      logits[N,1,28,28] (for exact likelihoods)
    cvae      encoder  image[N,1,28,28], label[N] (int64) -> mean[N,d], logvar[N,d]
              decoder  latent[N,d], label[N] (int64) -> image, logits
    denoiser  model    image[N,1,H,W] -> output[N,1,H,W]
    upscaler  model    image[N,1,H,W] -> output[N,1,sH,sW]   (s = entry.scale)

(ONNX forbids an output named like an input, hence `output`.) The names, shapes
and dtypes of every file are also recorded in its `inputs` / `outputs` below:
readers should take them from there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1

Task = Literal["autoencoder", "vae", "cvae", "denoise", "upscale"]
Role = Literal["encoder", "decoder", "model"]
# Symbolic axes are strings ("N", "H", "W", "2H", "4W"); fixed axes are ints.
Dim = int | str


class ManifestError(Exception):
    """The manifest or one of the files it names cannot be trusted."""


class ChecksumMismatch(ManifestError):  # noqa: N818
    """A model file's sha256 differs from the one recorded in the manifest."""


class MissingModelFile(ManifestError):  # noqa: N818
    """A model file named in the manifest is absent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TensorSpec(_Strict):
    """One input or output of an ONNX graph."""

    name: str
    shape: list[Dim]
    dtype: Literal["float32", "int64"]


class Int8Info(_Strict):
    """How an int8 graph was derived from its float32 export, which is kept beside it."""

    source_path: str = Field(description="The float32 graph, relative like `path`.")
    source_sha256: str
    method: str
    calibration_images: int
    max_abs_diff: float = Field(description="int8 vs float32 outputs on held-out inputs.")
    mean_abs_diff: float


class GraphFile(_Strict):
    """One ONNX file: where it is, its checksum and its signature."""

    path: str = Field(description="Relative to the folder holding manifest.json.")
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    int8: Int8Info | None = Field(
        default=None, description="Set when the served graph is the int8 form of a float one."
    )

    @property
    def float_path(self) -> str:
        """The float32 graph: this one, or the one it was quantized from."""
        return self.int8.source_path if self.int8 else self.path


class TrainingInfo(_Strict):
    """How the weights were obtained, enough to reproduce the run."""

    epochs: int
    seed: int
    optimizer: str
    learning_rate: float
    batch_size: int
    train_examples: int
    validation_examples: int
    best_validation_loss: float
    wall_time_s: float
    data_sha256: dict[str, str] = Field(description="sha256 of each decompressed IDX file used.")
    config: dict = Field(default_factory=dict, description="The full training config.")


class ModelEntry(_Strict):
    """One served model: one or two graphs plus what is known about them."""

    name: str
    dataset: str
    task: Task
    description: str = ""
    latent_dim: int | None = None
    num_classes: int | None = None
    scale: int | None = None
    image_size: int = 28
    files: dict[Role, GraphFile]
    opset: int
    versions: dict[str, str]
    parity_max_abs_diff: float
    training: TrainingInfo
    metrics: dict[str, float] = Field(default_factory=dict, description="Test-split metrics.")
    baselines: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="metric -> baseline name -> value, same split."
    )
    evaluation: dict = Field(default_factory=dict, description="How metrics were computed.")

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.name)


class DatasetInfo(_Strict):
    """Provenance of a dataset the models were trained on."""

    name: str
    class_names: list[str]
    licence: str
    source: str
    sha256: dict[str, str]


class Manifest(_Strict):
    """The whole of `manifest.json`."""

    format_version: int = FORMAT_VERSION
    created: str
    datasets: dict[str, DatasetInfo] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(default_factory=list)

    def get(self, dataset: str, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.dataset == dataset and entry.name == name:
                return entry
        raise KeyError((dataset, name))

    def upsert(self, entry: ModelEntry) -> None:
        """Replace the entry with the same (dataset, name), or append it."""
        self.models = [m for m in self.models if m.key != entry.key] + [entry]
        self.models.sort(key=lambda m: m.key)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(root: Path) -> Manifest:
    """Parse `root/manifest.json`; raise ManifestError naming the file if it is unusable."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise MissingModelFile(f"{path}: manifest not found")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValueError as err:
        raise ManifestError(f"{path}: not a valid manifest: {err}") from err
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {manifest.format_version}, expected {FORMAT_VERSION}"
        )
    return manifest


def verify_files(manifest: Manifest, root: Path) -> None:
    """Check that every file exists and matches its sha256; raise naming the first bad one."""
    for entry in manifest.models:
        for role, graph in entry.files.items():
            path = Path(root) / graph.path
            if not path.is_file():
                raise MissingModelFile(f"{path}: missing ({entry.dataset}/{entry.name} {role})")
            actual = sha256_file(path)
            if actual != graph.sha256:
                raise ChecksumMismatch(
                    f"{path}: sha256 {actual} does not match the manifest's {graph.sha256}"
                )


def save_manifest(manifest: Manifest, root: Path) -> Path:
    """Write `root/manifest.json` deterministically (sorted models, 2-space indent)."""
    path = Path(root) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False)
    path.write_text(text + "\n")
    return path
