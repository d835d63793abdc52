"""Conversions between what clients send or receive and float32 numpy arrays.

In: JSON arrays (`[N,H,W]`, `[H,W]`, `[N,784]`, also `[N,1,H,W]`), PNG/JPEG files
(greyscale), `.npy` files. Out: JSON (orjson, straight from numpy), PNG (one image
or a grid), `.npy`. Every check a client can fail raises `BadInput`/`TooLarge`
naming the field, so the HTTP layer only has to translate. `.npy` is read with
`allow_pickle=False`: nothing here ever unpickles client data.

Images inside the service are float32 `[N,1,H,W]` with pixels in [0,1]; they
leave as `[N,H,W]`.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import orjson
import simdjson
from PIL import Image, UnidentifiedImageError

from service.errors import BadInput, TooLarge

NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


# ---------------------------------------------------------------- JSON in / out


def loads_json(body: bytes) -> Any:
    """Parse a JSON body (orjson); raise BadInput on malformed JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadInput("body", f"not valid JSON: {err}") from None


def loads_request(body: bytes | bytearray | str, array_fields: frozenset[str]) -> Any:
    """Parse a request body; the big numeric arrays named in `array_fields` come out as
    float64 numpy arrays without a Python float per number.

    orjson + `numpy.asarray` build 200,000 Python floats and nested lists for a
    256-image body only to copy them into an array; simdjson writes the numbers
    straight into a buffer (the service's CPU per such request: docs/PERFORMANCE.md).
    Anything the fast path does not take (ragged, strings, booleans, nested deeper,
    escapes in the body, a non-object body) comes out as plain lists, which
    `numeric_array` then rejects with its usual message; malformed JSON raises
    `ValueError` for the caller's usual error.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    document = simdjson.Parser().parse(raw)
    if not isinstance(document, simdjson.Object):
        return _plain(document)
    out: dict[str, Any] = {}
    dense: dict[str, np.ndarray] = {}
    for key in document:
        value = document[key]  # lazy: items() would convert every value to Python
        array = _dense_array(value) if key in array_fields else None
        if array is None:
            out[key] = _plain(value)
        else:
            dense[key], out[key] = array, value
    if dense and not _brackets_add_up(raw, out, dense):
        dense = {}  # something nested where a number should be: let the slow path say what
    return {k: dense[k] if k in dense else _plain(v) for k, v in out.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def _dense_array(value: Any) -> np.ndarray | None:
    """A rectangular array of numbers -> float64 ndarray; None when it is visibly not one.

    Flattening (`as_buffer`) would hide an array standing in for a number
    (`[3, [4]]`); `_brackets_add_up` catches that afterwards."""
    if not isinstance(value, simdjson.Array):
        return None
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, simdjson.Array):
        shape.append(len(probe))
        if not len(probe):
            return None
        probe = probe[0]
    if not _rectangular(value, shape):
        return None
    try:
        flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):  # strings, booleans, nulls, numbers out of range
        return None
    if flat.size != math.prod(shape):
        return None
    return flat.reshape(shape)


def _rectangular(value: Any, shape: list[int]) -> bool:
    """Every row at every level has the length of the first one (checked on the lazy DOM)."""
    level = [value]
    for length in shape[:-1]:
        if any(len(row) != length for row in level):
            return False
        level = [item for row in level for item in row]
        if not all(isinstance(item, simdjson.Array) for item in level):
            return False
    return all(len(row) == shape[-1] for row in level)


def _brackets_add_up(raw: bytes, plain: dict[str, Any], dense: dict[str, np.ndarray]) -> bool:
    """Every `[` in the body is accounted for: the dense arrays' own rows, plus the arrays and
    characters of everything else. With no escapes in the body (so strings read as written),
    one extra `[` means an array nested where a number should be."""
    if b"\\" in raw:
        return False
    expected = sum(
        sum(math.prod(a.shape[:i]) for i in range(a.ndim)) for a in dense.values()
    )
    expected += sum(
        key.count("[") + (0 if key in dense else _brackets(value)) for key, value in plain.items()
    )
    return raw.count(b"[") == expected


def _brackets(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_brackets(v) for v in value)
    if isinstance(value, dict):
        return sum(k.count("[") + _brackets(v) for k, v in value.items())
    return value.count("[") if isinstance(value, str) else 0


def dumps_json(payload: dict[str, Any]) -> bytes:
    """Serialize a response; numpy arrays go straight to JSON without `.tolist()`."""
    clean = {
        k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v
        for k, v in payload.items()
        if v is not None
    }
    return orjson.dumps(clean, option=_JSON_OPTIONS)


def numeric_array(value: Any, field: str) -> np.ndarray:
    """Nested lists (or an array) -> float32 array, rejecting ragged and non-numeric input."""
    if value is None:
        raise BadInput(field, "missing")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise BadInput(field, "ragged array: rows have different lengths") from None
    if array.dtype == object:
        raise BadInput(
            field, "ragged array or mixed types: expected a rectangular array of numbers"
        )
    if array.dtype.kind not in "fiu":
        kind = {"b": "booleans", "U": "strings", "S": "strings"}.get(
            array.dtype.kind, str(array.dtype)
        )
        raise BadInput(field, f"expected numbers, got {kind}")
    if array.size == 0:
        raise BadInput(field, f"empty array (shape {list(array.shape)})")
    return array.astype(np.float32, copy=False)


def check_finite(array: np.ndarray, field: str) -> None:
    """No NaN or infinity (one pass, no temporary unless something is wrong)."""
    if not np.isfinite(array.sum(dtype=np.float64)):
        where = np.argwhere(~np.isfinite(array))
        if len(where):
            raise BadInput(field, f"contains NaN or infinity (first at index {where[0].tolist()})")


def check_unit_range(images: np.ndarray, field: str = "images") -> None:
    """Pixels must be finite and lie in [0,1] (two passes: min and max catch NaN/inf too)."""
    low, high = float(images.min()), float(images.max())
    if not (low >= 0.0 and high <= 1.0):  # also true when NaN
        check_finite(images, field)
        hint = " (divide 0-255 images by 255)" if high > 1.0 else ""
        raise BadInput(
            field, f"pixel values must lie in [0,1], found min {low:g} and max {high:g}{hint}"
        )


def as_image_batch(
    array: np.ndarray,
    *,
    field: str = "images",
    image_size: int = 28,
    max_batch: int,
    max_side: int,
) -> np.ndarray:
    """A numeric array of any accepted layout -> float32 `[N,1,H,W]`, checked.

    Layouts: `[H,W]` one image; `[N,H*W]` flattened square images of side
    `image_size` (`[N,784]`); `[N,H,W]`; `[N,1,H,W]`.
    """
    flat = image_size * image_size
    shape = list(array.shape)
    if array.ndim == 1 and shape[0] == flat:
        array = array.reshape(1, 1, image_size, image_size)
    elif array.ndim == 2 and shape[1] == flat:
        array = array.reshape(-1, 1, image_size, image_size)
    elif array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and shape[1] == 1:
        pass
    else:
        raise BadInput(
            field,
            f"shape {shape} not understood: send [N,H,W], [H,W], [N,{flat}] or [N,1,H,W]",
        )
    n, _, h, w = array.shape
    if n > max_batch:
        raise TooLarge(field, f"batch of {n} images is over the limit of {max_batch}")
    if h > max_side or w > max_side:
        raise TooLarge(field, f"image side {h}x{w} is over the limit of {max_side} pixels")
    check_unit_range(array, field)
    return np.ascontiguousarray(array, dtype=np.float32)


def images_from_json(
    value: Any, *, field: str = "images", image_size: int = 28, max_batch: int, max_side: int
) -> np.ndarray:
    """JSON images (nested lists) -> float32 `[N,1,H,W]` in [0,1]."""
    array = numeric_array(value, field)
    return as_image_batch(
        array, field=field, image_size=image_size, max_batch=max_batch, max_side=max_side
    )


def latents_from_json(
    value: Any, *, dim: int, max_batch: int, field: str = "latents"
) -> np.ndarray:
    """JSON latents `[N,d]` or `[d]` -> float32 `[N,d]`, checked against the model's `d`."""
    array = numeric_array(value, field)
    return as_latent_batch(array, dim=dim, max_batch=max_batch, field=field)


def as_latent_batch(
    array: np.ndarray, *, dim: int, max_batch: int, field: str = "latents"
) -> np.ndarray:
    """A numeric array `[N,d]` or `[d]` -> float32 `[N,d]`."""
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise BadInput(
            field, f"shape {list(array.shape)} not understood: send [N,{dim}] or [{dim}]"
        )
    if array.shape[1] != dim:
        raise BadInput(field, f"each latent must have {dim} values, got {array.shape[1]}")
    if array.shape[0] > max_batch:
        raise TooLarge(field, f"batch of {array.shape[0]} latents is over the limit of {max_batch}")
    check_finite(array, field)
    return np.ascontiguousarray(array, dtype=np.float32)


def labels_array(value: Any, *, n: int, num_classes: int, field: str = "labels") -> np.ndarray:
    """One class index per row (or one for all) -> int64 `[N]`, each in [0, num_classes)."""
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.ndim > 1:
        raise BadInput(field, "expected an integer or a list of integers (class indices)")
    if array.ndim == 0:
        array = np.full(n, int(array), dtype=np.int64)
    if array.shape[0] != n:
        raise BadInput(field, f"got {array.shape[0]} labels for {n} rows")
    if n and (array.min() < 0 or array.max() >= num_classes):
        raise BadInput(field, f"class indices must lie in [0, {num_classes - 1}]")
    return array.astype(np.int64, copy=False)


# ---------------------------------------------------------------- files in


def sniff(data: bytes) -> str | None:
    """'png', 'jpeg', 'npy' or None, from the first bytes."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(NPY_MAGIC):
        return "npy"
    return None


def _parse_npy(data: bytes, field: str) -> np.ndarray:
    """Header first, then a zero-copy view: the declared size must match the bytes sent,
    so a small file cannot make the server allocate a huge array."""
    fmt = np.lib.format
    stream = io.BytesIO(data)
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as err:  # bad magic, bad header
        raise BadInput(field, f"not a readable .npy file: {err}") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise BadInput(field, f".npy dtype {dtype} not supported")
    offset = stream.tell()
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - offset != expected:
        raise BadInput(
            field,
            f".npy header declares shape {list(shape)} ({expected} bytes) "
            f"but {len(data) - offset} bytes of data follow",
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran else "C")


def read_npy(data: bytes, *, images: bool, field: str = "body") -> np.ndarray:
    """Parse `.npy` bytes into float32 without ever unpickling.

    Float arrays pass; for `images`, uint8 arrays are also accepted and read as
    0..255 grey levels (scaled by 1/255), a quarter of the bytes of float32.
    """
    array = _parse_npy(data, field)
    if images and array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype.kind != "f":
        accepted = "float32 (or uint8 0-255)" if images else "float32"
        raise BadInput(field, f".npy dtype {array.dtype} not supported: send {accepted}")
    if array.size == 0:
        raise BadInput(field, f"empty array (shape {list(array.shape)})")
    return array.astype(np.float32, copy=False)  # finiteness: checked with the range/latents


def read_image(
    data: bytes, *, max_side: int, size: int | None = None, field: str = "body"
) -> np.ndarray:
    """PNG/JPEG bytes -> float32 `[H,W]` greyscale in [0,1], resized to `size`x`size` if given.

    The side limit is checked on the header, before the pixels are decoded, so a
    decompression bomb costs nothing.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
    except Image.DecompressionBombError:
        raise TooLarge(
            field, f"image canvas is over the limit of {max_side} pixels a side"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadInput(field, "not a PNG or JPEG image") from None
    width, height = image.size
    if width > max_side or height > max_side:
        raise TooLarge(field, f"image side {height}x{width} is over the limit of {max_side} pixels")
    if width < 1 or height < 1:
        raise BadInput(field, "image has no pixels")
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float32) / 65535.0
            image = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8))
        grey = image.convert("L")
        if size is not None and grey.size != (size, size):
            grey = grey.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(grey, dtype=np.float32) / 255.0
    except Exception as err:  # truncated or corrupt pixel data
        raise BadInput(field, f"corrupt image data: {err}") from None


# ---------------------------------------------------------------- files out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0,1] floats -> 0..255 bytes (round to nearest)."""
    return np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)


def tile(
    images: np.ndarray, columns: int | None = None, pad: int = 2, fill: int = 64
) -> np.ndarray:
    """`[N,H,W]` uint8 -> one `[rows*H', cols*W']` grid (a single image is returned as is)."""
    n, h, w = images.shape
    if n == 1:
        return images[0]
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad), fill, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def png_bytes(images: np.ndarray, columns: int | None = None) -> bytes:
    """`[N,H,W]` floats in [0,1] -> PNG bytes of one image or a grid of all."""
    buffer = io.BytesIO()
    Image.fromarray(tile(to_uint8(images), columns)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """Any numeric array -> `.npy` bytes (no pickle)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
