"""MNIST and Fashion-MNIST: find, verify, download and parse the IDX files.

The data folder is chosen by `--data-dir`, else `$AE_DATA_DIR`, else `./data`.
It holds one sub-folder per dataset (`mnist/`, `fashion-mnist/`) with the four
standard files, gzipped or raw. Every file is checked against the sha256 of its
*decompressed* content (gzip headers vary between mirrors; the bytes inside do
not), and its IDX header is checked for magic number, count and size. Any problem
raises `DataError` with the file's path and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATA_ENV = "AE_DATA_DIR"
SPLITS = ("train", "test")
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


class DataError(Exception):
    """A data file is missing, corrupt, truncated or not the expected one."""


@dataclass(frozen=True)
class IdxFile:
    """One official file: its name, what it holds and the sha256 of its raw bytes."""

    name: str
    kind: str  # "images" or "labels"
    count: int
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    licence: str
    source: str
    mirrors: tuple[str, ...]
    files: dict[str, IdxFile]  # keys: train-images, train-labels, test-images, test-labels


def _files(shas: list[str]) -> dict[str, IdxFile]:
    names = [
        ("train-images", "train-images-idx3-ubyte", "images", 60_000),
        ("train-labels", "train-labels-idx1-ubyte", "labels", 60_000),
        ("test-images", "t10k-images-idx3-ubyte", "images", 10_000),
        ("test-labels", "t10k-labels-idx1-ubyte", "labels", 10_000),
    ]
    return {
        key: IdxFile(name, kind, n, sha)
        for (key, name, kind, n), sha in zip(names, shas, strict=True)
    }


# sha256 of the decompressed IDX files (see shared/data/SOURCES.md).
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        licence="CC BY-SA 3.0",
        source="Yann LeCun, Corinna Cortes, Christopher J.C. Burges: The MNIST database",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        files=_files([
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ]),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        licence="MIT, Copyright (c) 2017 Zalando SE",
        source="Han Xiao, Kashif Rasul, Roland Vollgraf (Zalando Research), 2017",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=_files([
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ]),
    ),
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The option wins, then `$AE_DATA_DIR`, then `./data`."""
    return Path(data_dir or os.environ.get(DATA_ENV) or "data")


def parse_idx(raw: bytes, kind: str, where: str) -> np.ndarray:
    """Parse raw IDX bytes into uint8 images [N,28,28] or labels [N]; check header and size."""
    magic = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    header = 16 if kind == "images" else 8
    if len(raw) < header:
        raise DataError(f"{where}: {len(raw)} bytes, too short for an IDX {kind} header")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DataError(f"{where}: magic number 0x{found:08x}, expected 0x{magic:08x} ({kind})")
    count = struct.unpack(">I", raw[4:8])[0]
    shape: tuple[int, ...] = (count,)
    if kind == "images":
        rows, cols = struct.unpack(">II", raw[8:16])
        if (rows, cols) != (28, 28):
            raise DataError(f"{where}: images are {rows}x{cols}, expected 28x28")
        shape = (count, rows, cols)
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{where}: {problem}: {len(raw)} bytes, header announces {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_raw(path: Path) -> bytes:
    """Read a file, decompressing it if it is gzip; name the file on any failure."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        return data
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read or decompress: {err}") from err


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def load_idx_file(path: Path, spec: IdxFile) -> np.ndarray:
    """Read, verify the decompressed sha256, then parse one official IDX file."""
    raw = _read_raw(path)
    digest = hashlib.sha256(raw).hexdigest()
    array = parse_idx(raw, spec.kind, str(path))  # header problems are the clearer message
    if digest != spec.sha256:
        raise DataError(
            f"{path}: sha256 of the decompressed content is {digest}, expected {spec.sha256} "
            f"(wrong or modified file)"
        )
    if len(array) != spec.count:
        raise DataError(f"{path}: {len(array)} {spec.kind}, expected {spec.count}")
    return array


def download(spec: DatasetSpec, folder: Path, mirrors: tuple[str, ...] | None = None) -> None:
    """Fetch the missing official files from the first mirror that serves a verified copy."""
    folder.mkdir(parents=True, exist_ok=True)
    for idx in spec.files.values():
        if _find(folder, idx.name):
            continue
        errors = []
        for base in mirrors or spec.mirrors:
            url = f"{base.rstrip('/')}/{idx.name}.gz"
            log.info("downloading %s", url)
            part = Path(tempfile.mkstemp(dir=folder, suffix=".part")[1])
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                    shutil.copyfileobj(response, out)
                load_idx_file(part, idx)  # verified before it takes the real name
                part.replace(folder / f"{idx.name}.gz")
                break
            except (OSError, DataError) as err:
                errors.append(f"{url}: {err}")
            finally:
                part.unlink(missing_ok=True)
        else:
            raise DataError(f"could not download {idx.name}: " + "; ".join(errors))


@dataclass
class Split:
    """Images as float32 in [0,1], shape [N,1,28,28], and int64 labels [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_dataset(
    name: str, data_dir: str | Path | None = None, allow_download: bool = False
) -> dict[str, Split]:
    """Load both splits of `name`, verified; download the official files first if allowed."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    folder = resolve_data_dir(data_dir) / name
    missing = [f.name for f in spec.files.values() if not _find(folder, f.name)]
    if missing and allow_download:
        download(spec, folder)
    elif missing:
        raise DataError(
            f"{folder}: missing {', '.join(missing)}; point --data-dir or ${DATA_ENV} at a "
            f"folder holding {name}/, or pass --download"
        )
    splits = {}
    for split in SPLITS:
        image_spec, label_spec = spec.files[f"{split}-images"], spec.files[f"{split}-labels"]
        images = load_idx_file(_find(folder, image_spec.name), image_spec)
        labels = load_idx_file(_find(folder, label_spec.name), label_spec)
        splits[split] = Split(
            images=(images.astype(np.float32) / 255.0)[:, None],
            labels=labels.astype(np.int64),
        )
    return splits


def data_available(name: str, data_dir: str | Path | None = None) -> bool:
    """True when all four files of `name` are present (not yet verified)."""
    folder = resolve_data_dir(data_dir) / name
    return all(_find(folder, f.name) for f in DATASETS[name].files.values())


def synthetic_dataset(n_train: int = 512, n_test: int = 128, seed: int = 0) -> dict[str, Split]:
    """Tiny class-structured fake data (a blob per class) for tests and smoke runs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]

    def make(n: int) -> Split:
        labels = rng.integers(0, 10, n)
        cy = 7 + (labels // 4) * 6 + rng.normal(0, 1, n)
        cx = 6 + (labels % 4) * 5 + rng.normal(0, 1, n)
        r2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        images = np.exp(-r2 / (2 * (2.0 + labels[:, None, None] * 0.3) ** 2))
        return Split(images.astype(np.float32)[:, None], labels.astype(np.int64))

    return {"train": make(n_train), "test": make(n_test)}


def dataset_checksums(name: str) -> dict[str, str]:
    return {f.name: f.sha256 for f in DATASETS[name].files.values()}
