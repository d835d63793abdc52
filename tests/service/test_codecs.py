"""Codecs: every accepted layout, every refusal naming its field, no unpickling, no bombs."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import codecs
from service.errors import BadInput, TooLarge

LIMITS = {"max_batch": 8, "max_side": 64}


def png(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((3, 28, 28), (3, 1, 28, 28)),
        ((28, 28), (1, 1, 28, 28)),
        ((5, 784), (5, 1, 28, 28)),
        ((784,), (1, 1, 28, 28)),
        ((2, 1, 10, 12), (2, 1, 10, 12)),
        ((10, 12), (1, 1, 10, 12)),
    ],
)
def test_image_layouts(shape, expected):
    value = np.full(shape, 0.5).tolist()
    images = codecs.images_from_json(value, **LIMITS)
    assert images.shape == expected and images.dtype == np.float32
    assert images.flags.c_contiguous


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([[0.1, 0.2], [0.3]], "ragged"),
        ([["a", "b"], ["c", "d"]], "strings"),
        ([[True, False], [True, True]], "booleans"),
        ([[0.1, float("nan")], [0.2, 0.3]], "NaN"),
        ([[0.1, float("inf")], [0.2, 0.3]], "NaN or infinity"),
        ([[0.1, -0.5], [0.2, 0.3]], "[0,1]"),
        ([[0.1, 255.0], [0.2, 0.3]], "divide 0-255"),
        ([], "empty"),
        (np.zeros((1, 1, 1, 2, 2)).tolist(), "not understood"),
        (np.zeros((1, 3, 4, 4)).tolist(), "not understood"),
        ({"a": 1}, "ragged array or mixed types"),
        (None, "missing"),
    ],
)
def test_image_refusals_name_the_field(value, words):
    with pytest.raises(BadInput) as err:
        codecs.images_from_json(value, **LIMITS)
    assert err.value.field == "images" and words in err.value.message
    assert err.value.to_dict()["detail"][0]["loc"] == ["images"]


def test_image_limits_are_too_large():
    with pytest.raises(TooLarge, match="over the limit of 8"):
        codecs.images_from_json(np.zeros((9, 4, 4)).tolist(), **LIMITS)
    with pytest.raises(TooLarge, match="65x4"):
        codecs.images_from_json(np.zeros((1, 65, 4)).tolist(), **LIMITS)


def test_latents_and_labels():
    assert codecs.latents_from_json([0.0, 1.0], dim=2, max_batch=4).shape == (1, 2)
    with pytest.raises(BadInput, match="must have 16 values, got 2"):
        codecs.latents_from_json([[0.0, 1.0]], dim=16, max_batch=4)
    with pytest.raises(BadInput, match="NaN"):
        codecs.latents_from_json([[float("nan"), 1.0]], dim=2, max_batch=4)
    assert codecs.labels_array(3, n=4, num_classes=10).tolist() == [3, 3, 3, 3]
    assert codecs.labels_array([1, 2], n=2, num_classes=10).dtype == np.int64
    for bad, words in [([1], "got 1 labels for 2"), ([1, 10], "[0, 9]"), ([0.5, 1], "integer")]:
        with pytest.raises(BadInput, match=words.replace("[", r"\[").replace("]", r"\]")):
            codecs.labels_array(bad, n=2, num_classes=10)


def test_npy_round_trip_and_uint8():
    array = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    back = codecs.read_npy(codecs.npy_bytes(array), images=True)
    np.testing.assert_array_equal(back, array)
    as_bytes = codecs.read_npy(codecs.npy_bytes(np.array([[0, 255]], np.uint8)), images=True)
    np.testing.assert_allclose(as_bytes, [[0.0, 1.0]])
    fortran = np.asfortranarray(array[0])
    np.testing.assert_array_equal(codecs.read_npy(codecs.npy_bytes(fortran), images=False), fortran)
    with pytest.raises(BadInput, match="uint8"):
        codecs.read_npy(codecs.npy_bytes(np.array([1, 2], np.uint8)), images=False)


class _Exploit:
    """Unpickling this touches a file: the test proves it never happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_npy_never_unpickles(tmp_path: Path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match="not supported"):
        codecs.read_npy(buffer.getvalue(), images=True)
    assert not marker.exists()
    with pytest.raises(BadInput, match="not a readable .npy"):
        codecs.read_npy(codecs.NPY_MAGIC + pickle.dumps(_Exploit(marker)), images=True)
    assert not marker.exists()


def test_npy_declared_size_must_match():
    data = codecs.npy_bytes(np.zeros((4, 28, 28), np.float32))
    with pytest.raises(BadInput, match="bytes of data follow"):
        codecs.read_npy(data[:-100], images=True)
    huge = data.replace(b"(4, 28, 28)", b"(400000000, 28, 28)".ljust(len(b"(4, 28, 28)")))
    with pytest.raises(BadInput):
        codecs.read_npy(huge, images=True)


def test_read_png_jpeg_and_resize():
    digit = np.zeros((56, 40), np.uint8)
    digit[10:40, 15:25] = 255
    grey = codecs.read_image(png(digit), max_side=64)
    assert grey.shape == (56, 40) and grey.max() == 1.0 and grey.min() == 0.0
    small = codecs.read_image(png(digit), max_side=64, size=28)
    assert small.shape == (28, 28) and 0.0 <= small.min() <= small.max() <= 1.0
    rgb = codecs.read_image(png(digit, mode="RGB", fmt="JPEG"), max_side=64)
    assert rgb.shape == (56, 40) and abs(rgb.mean() - grey.mean()) < 0.02
    sixteen = np.full((4, 4), 65535, np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(sixteen).save(buffer, format="PNG")
    assert codecs.read_image(buffer.getvalue(), max_side=64).min() == 1.0


def test_image_refusals():
    gif = io.BytesIO()
    Image.new("L", (4, 4)).save(gif, format="GIF")
    for data in [b"not an image", gif.getvalue(), png(np.zeros((8, 8), np.uint8))[:40]]:
        with pytest.raises(BadInput, match="PNG or JPEG|corrupt"):
            codecs.read_image(data, max_side=64)
    with pytest.raises(TooLarge, match="over the limit"):
        codecs.read_image(png(np.zeros((65, 8), np.uint8)), max_side=64)


def test_side_limit_checked_before_decoding(monkeypatch):
    """A decompression bomb (tiny file, huge canvas) is refused on its header."""
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 100_000
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded pixels"))
    with pytest.raises(TooLarge):
        codecs.read_image(bomb.getvalue(), max_side=512)


def test_outputs():
    images = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    grid = Image.open(io.BytesIO(codecs.png_bytes(images)))
    assert grid.size == (3 * 30 + 2, 2 * 30 + 2) and grid.mode == "L"
    one = np.asarray(Image.open(io.BytesIO(codecs.png_bytes(images[:1]))))
    np.testing.assert_array_equal(one, codecs.to_uint8(images[0]))
    assert codecs.tile(codecs.to_uint8(images), columns=5).shape == (32, 5 * 30 + 2)
    decoded = codecs.loads_json(codecs.dumps_json({"images": images[:, :2, :2], "skip": None}))
    assert set(decoded) == {"images"}
    np.testing.assert_array_equal(np.asarray(decoded["images"], np.float32), images[:, :2, :2])
    with pytest.raises(BadInput, match="not valid JSON"):
        codecs.loads_json(b"{")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (codecs.PNG_MAGIC + b"..", "png"),
        (b"\xff\xd8\xff\xe0", "jpeg"),
        (b"\x93NUMPY", "npy"),
        (b"", None),
    ],
)
def test_sniff(data, kind):
    assert codecs.sniff(data) == kind


ARRAYS = frozenset({"images", "latents"})


def test_request_arrays_parse_straight_to_numpy():
    images = np.random.default_rng(1).random((4, 28, 28), dtype=np.float32)
    body = codecs.dumps_json({"images": images, "model": "vae", "labels": [1, 2, 3, 4]})
    parsed = codecs.loads_request(body, ARRAYS)
    assert isinstance(parsed["images"], np.ndarray) and parsed["images"].shape == (4, 28, 28)
    np.testing.assert_array_equal(parsed["images"].astype(np.float32), images)
    assert parsed["model"] == "vae" and parsed["labels"] == [1, 2, 3, 4]
    spaced = codecs.loads_request(b' { "latents" : [ [1 , 2] , [3, 4.5] ] } ', ARRAYS)
    np.testing.assert_array_equal(spaced["latents"], [[1, 2], [3, 4.5]])
    assert codecs.loads_request(b'{"images": [[1, 2]], "x": "a[b"}', ARRAYS)["x"] == "a[b"


@pytest.mark.parametrize(
    "body",
    [
        b'{"images": [[1, 2], [3]]}',  # ragged
        b'{"images": [[1, 2], [3], [4, 5, 6]]}',  # ragged with a matching count
        b'{"images": [[1, 2], [3, [4]]]}',  # an array where a number should be
        b'{"images": [[1, 2], [[3], 4]]}',
        b'{"images": [[0.5, "x"]]}',
        b'{"images": [[true, 0]]}',
        b'{"images": [[1, 2], [3, 4]], "model": "a\\u005bb"}',  # escapes: slow path
        b'{"images": []}',
    ],
)
def test_request_arrays_fall_back_to_lists(body: bytes):
    """What the fast path does not take exactly comes out as the JSON says (lists), so the
    usual checks name the problem; nothing is reshaped silently."""
    parsed = codecs.loads_request(body, ARRAYS)
    assert parsed["images"] == codecs.loads_json(body)["images"]


def test_request_not_json():
    with pytest.raises(ValueError):
        codecs.loads_request(b'{"images": [1,', ARRAYS)
    assert codecs.loads_request(b"[1, 2]", ARRAYS) == [1, 2]
