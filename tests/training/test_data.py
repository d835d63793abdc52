"""IDX parsing, checksum verification, data-folder resolution and the download path."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from training import data
from training.data import DataError, DatasetSpec, IdxFile


def idx_images(n: int, rows: int = 28, cols: int = 28, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)
    return struct.pack(">IIII", 0x803, n, rows, cols) + pixels.tobytes()


def idx_labels(n: int, seed: int = 0) -> bytes:
    labels = np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)
    return struct.pack(">II", 0x801, n) + labels.tobytes()


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def fake_spec(n_train: int = 6, n_test: int = 4, mirrors: tuple[str, ...] = ()):
    """A DatasetSpec over crafted files, and the raw bytes each should hold."""
    raws = {
        "train-images": idx_images(n_train, seed=1), "train-labels": idx_labels(n_train, seed=2),
        "test-images": idx_images(n_test, seed=3), "test-labels": idx_labels(n_test, seed=4),
    }
    names = {"train-images": "train-images-idx3-ubyte", "train-labels": "train-labels-idx1-ubyte",
             "test-images": "t10k-images-idx3-ubyte", "test-labels": "t10k-labels-idx1-ubyte"}
    files = {
        key: IdxFile(names[key], key.split("-")[1], n_train if "train" in key else n_test,
                     sha(raw))
        for key, raw in raws.items()
    }
    spec = DatasetSpec("fake", tuple("0123456789"), "test", "crafted", mirrors, files)
    return spec, {files[k].name: raw for k, raw in raws.items()}


@pytest.fixture
def fake_dataset(monkeypatch, tmp_path):
    spec, raws = fake_spec()
    monkeypatch.setitem(data.DATASETS, "fake", spec)
    folder = tmp_path / "fake"
    folder.mkdir()
    for name, raw in raws.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
    return tmp_path, folder, raws


def test_parse_good_images_and_labels():
    images = data.parse_idx(idx_images(3), "images", "x")
    labels = data.parse_idx(idx_labels(3), "labels", "y")
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (3,)


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (idx_images(2)[:10], "images", "too short"),
        (idx_labels(20), "images", "magic number 0x00000801"),
        (idx_images(2), "labels", "magic number 0x00000803"),
        (idx_images(2)[:-5], "images", "truncated"),
        (idx_images(2) + b"\0", "images", "trailing bytes"),
        (idx_images(2, rows=32, cols=32), "images", "32x32, expected 28x28"),
        (idx_labels(5)[:-1], "labels", "truncated"),
    ],
)
def test_parse_bad_bytes_names_the_problem(raw, kind, message):
    with pytest.raises(DataError, match=message) as err:
        data.parse_idx(raw, kind, "some/file.gz")
    assert "some/file.gz" in str(err.value)


def test_load_verified_fake_dataset(fake_dataset):
    root, _, raws = fake_dataset
    splits = data.load_dataset("fake", root)
    assert splits["train"].images.shape == (6, 1, 28, 28)
    assert splits["train"].images.dtype == np.float32
    assert splits["train"].images.min() >= 0.0 and splits["train"].images.max() <= 1.0
    expected = np.frombuffer(raws["t10k-labels-idx1-ubyte"], np.uint8, offset=8)
    np.testing.assert_array_equal(splits["test"].labels, expected)


def test_raw_uncompressed_files_are_accepted(fake_dataset):
    root, folder, raws = fake_dataset
    for name, raw in raws.items():
        (folder / f"{name}.gz").unlink()
        (folder / name).write_bytes(raw)
    assert len(data.load_dataset("fake", root)["test"]) == 4


def test_checksum_mismatch_names_the_file(fake_dataset):
    root, folder, _ = fake_dataset
    other = idx_labels(4, seed=99)  # valid IDX, wrong content
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(other))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: sha256 .* expected"):
        data.load_dataset("fake", root)


def test_corrupt_gzip_names_the_file(fake_dataset):
    root, folder, _ = fake_dataset
    good = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: cannot read or decompress"):
        data.load_dataset("fake", root)


def test_missing_files_say_how_to_fix(tmp_path):
    with pytest.raises(DataError, match=r"missing .*--data-dir or \$AE_DATA_DIR.*--download"):
        data.load_dataset("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        data.load_dataset("cifar")


def test_data_dir_option_beats_env_beats_default(monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, "/from/env")
    assert data.resolve_data_dir("/from/option") == Path("/from/option")
    assert data.resolve_data_dir(None) == Path("/from/env")
    monkeypatch.delenv(data.DATA_ENV)
    assert data.resolve_data_dir(None) == Path("data")


class _Server:
    """A loopback HTTP server over a dict of path -> bytes."""

    def __init__(self, files: dict[str, bytes]):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                body = files.get(self.path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"not found")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_download_from_loopback_mirror(monkeypatch, tmp_path):
    spec, raws = fake_spec()
    server = _Server({f"{name}.gz": gzip.compress(raw) for name, raw in raws.items()})
    try:
        monkeypatch.setitem(data.DATASETS, "fake", spec)
        data.download(spec, tmp_path / "fake", mirrors=(server.url,))
        splits = data.load_dataset("fake", tmp_path)
        assert len(splits["train"]) == 6
        assert not list((tmp_path / "fake").glob("*.part"))
    finally:
        server.close()


def test_download_rejects_a_wrong_file_and_tries_the_next_mirror(tmp_path):
    spec, raws = fake_spec()
    bad = _Server({f"{name}.gz": gzip.compress(idx_labels(1)) for name in raws})
    good = _Server({f"{name}.gz": gzip.compress(raw) for name, raw in raws.items()})
    try:
        data.download(spec, tmp_path, mirrors=(bad.url, good.url))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.gz" for n in raws)
    finally:
        bad.close()
        good.close()


def test_download_failure_leaves_nothing_behind(tmp_path):
    spec, raws = fake_spec()
    bad = _Server({f"{name}.gz": b"garbage" for name in raws})
    try:
        with pytest.raises(DataError, match="could not download train-images-idx3-ubyte"):
            data.download(spec, tmp_path, mirrors=(bad.url,))
        assert list(tmp_path.iterdir()) == []
    finally:
        bad.close()


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_dataset_loads_verified(real_data_dir, name):
    if not data.data_available(name, real_data_dir):
        pytest.skip(f"{name} files not in {real_data_dir}")
    splits = data.load_dataset(name, real_data_dir)
    assert splits["train"].images.shape == (60_000, 1, 28, 28)
    assert splits["test"].images.shape == (10_000, 1, 28, 28)
    counts = np.bincount(splits["test"].labels, minlength=10)
    if name == "mnist":
        assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    else:
        assert counts.tolist() == [1000] * 10
