"""Int8 graphs for the models whose serving cost is their convolutions.

Why: a JSON `/denoise` request of 256 images spends most of its CPU in the
denoiser's U-Net. onnxruntime's static QDQ quantization (int8 weights per output
channel, uint8 activations, ranges calibrated on the model's own training inputs)
runs it about twice as fast on a CPU with VNNI, for a loss the test metrics
measure (docs/PERFORMANCE.md, `exported_models/README.md`).

The float32 export is kept beside the int8 file and named in the manifest
(`GraphFile.int8`): it holds the weights under their state-dict names, so
`reexport` and the benchmark's torch comparison read them back exactly, and the
torch parity check stays exact there. The int8 file is the one that is served.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from service.manifest import Int8Info, sha256_file

log = logging.getLogger(__name__)

# Models served as int8; the others are dense-layer bound or already cheap to serve.
INT8_MODELS = frozenset({"denoiser"})
CALIBRATION_IMAGES = 1024  # training inputs the activation ranges are taken from
CHECK_IMAGES = 256  # validation inputs the int8 graph is compared on
CALIBRATION_BATCH = 128
METHOD = ("onnxruntime quantize_static, QDQ: int8 weights per output channel, uint8 "
          "activations, MinMax ranges; the first conv (one input channel) kept in float32")
# Mean abs pixel difference int8 vs float32 above which the export fails: it catches a
# broken quantization (ranges calibrated on the wrong data), not int8 rounding, whose
# cost the test metrics report.
INT8_MEAN_TOLERANCE = 0.01


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, images: np.ndarray):
        self._feeds = iter(
            {input_name: images[i: i + CALIBRATION_BATCH]}
            for i in range(0, len(images), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize(float_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    """Write the int8 form of the single-input graph at `float_path` to `int8_path`,
    with activation ranges calibrated on `calibration` (float32, the graph's input)."""
    with tempfile.TemporaryDirectory(prefix="ae-int8-") as scratch:
        # onnxruntime's recommended pre-pass: constant folding (a bias-free conv's zero
        # bias becomes an initializer the quantizer can take) and ONNX shape inference
        # (the symbolic one cannot bound Col2Im).
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        # The quantizer prints the tensors it cannot type to stdout: keep the CLI quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared), str(int8_path), _Batches(graph.input[0].name, calibration),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=_first_convs(graph),
            )


def _first_convs(graph: onnx.GraphProto) -> list[str]:
    """Convs that read a graph input: with one input channel they gain nothing in int8
    (a one-off timing: 2-7 % faster kept in float32, and closer to the float graph)."""
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]


def compare(float_path: Path, int8_path: Path, images: np.ndarray) -> tuple[float, float]:
    """Max and mean abs difference between the two graphs' outputs on `images`."""
    outputs = []
    for path in (float_path, int8_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: images})[0])
    diff = np.abs(outputs[0] - outputs[1])
    return float(diff.max()), float(diff.mean())


def quantize_checked(float_path: Path, int8_path: Path, source_rel: str,
                     calibration: np.ndarray, held_out: np.ndarray) -> Int8Info:
    """`quantize`, then compare with the float graph on `held_out` inputs; the manifest record.

    Raises ValueError when the int8 graph strays further than `INT8_MEAN_TOLERANCE`.
    """
    quantize(float_path, int8_path, calibration)
    max_diff, mean_diff = compare(float_path, int8_path, held_out)
    if mean_diff > INT8_MEAN_TOLERANCE:
        raise ValueError(f"{int8_path}: int8 vs float32 mean abs diff {mean_diff:.2e} > "
                         f"{INT8_MEAN_TOLERANCE}")
    log.info("%s: int8, vs float32 max abs diff %.3g, mean %.3g", int8_path, max_diff, mean_diff)
    return Int8Info(
        source_path=source_rel, source_sha256=sha256_file(float_path), method=METHOD,
        calibration_images=len(calibration), max_abs_diff=max_diff, mean_abs_diff=mean_diff,
    )
