"""Which layer shapes does onnxruntime run faster than torch eager, and what do they cost to train?

    python -m benchmarks.architectures --out arch.json      # ~1 min on 2 idle cores

The per-graph bar (onnxruntime >= torch eager, batch 256) depends on the
architecture far more than on any session option: this script times the shipped
encoder/decoder shapes against alternatives built from the same pieces, with
fresh weights (speed does not depend on them), each exported by the project's
exporter and run with the service's session options. For each it also times one
training step (forward + backward + Adam, batch 128, one thread), because a
shape onnxruntime likes but torch trains slowly moves the cost to training,
which has its own bar. Timing as in `benchmarks.inprocess`: alternating blocks
of calls, torch on a warm heap; figures are medians.

Candidates (d=16 latent, width 32):
- `encoder.shipped`: conv 4x4/2 x2 -> dense 3136 -> 256 -> 16 (training.models.ConvEncoder)
- `encoder.vgg`: conv 3x3 + maxpool x2, conv 3x3/2 -> dense 2048 -> 16
- `encoder.conv3s2`: conv 3x3/2, conv 3x3 + maxpool, conv 3x3/2 -> dense 2048 -> 16
- `decoder.shipped`: dense 16 -> 256 -> 3136, transposed conv 4x4/2 x2 (ConvDecoder);
  torch runs the transposed convs, the graph their export forms (`UpConv`: the
  first as sub-pixel 3x3 conv + Col2Im, the last as MatMul + Col2Im)
- `decoder.convtranspose`: the same, exported as ConvTranspose (before `UpConv`)
- `decoder.all_subpixel`: the same, both layers in the sub-pixel form
- `decoder.all_gemm`: the same, both layers in the MatMul + Col2Im form
- `decoder.depth_to_space`: the same, both sub-pixel with DepthToSpace (the previous export)
- `decoder.resize_conv`: dense 16 -> 2048, (nearest resize + conv 3x3) x3
- `decoder.pixel_shuffle`: dense 16 -> 256 -> 3136, (conv 3x3 + PixelShuffle) x2, trained so
- `denoiser.shipped`: the U-Net of training.models.Denoiser (joins: `SkipJoin`)
- `denoiser.nearest_join`: the U-Net shipped before: the deep path resized (nearest)
  to the skip's size and convolved with it (kernel split, no concatenation)
- `denoiser.concat`: the same joining by concatenation
- `*.int8`: the graph quantized as shipped (`training.quantize`, ranges calibrated on
  random images: the speed does not depend on them); torch runs the float module
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _candidates() -> dict[str, tuple[Callable, tuple[int, ...]]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from training.models import (
        ConvDecoder,
        ConvEncoder,
        Denoiser,
        PixelShuffle,
        UpConv,
        _conv_relu,
    )

    class Resize(nn.Module):
        def __init__(self, size: int):
            super().__init__()
            self.size = size

        def forward(self, x):
            return F.interpolate(x, size=self.size, mode="nearest")

    class NearestJoinDenoiser(Denoiser):
        """The denoiser shipped before `SkipJoin`: same levels, joins by nearest resize."""

        def __init__(self, w: int = 16):
            super().__init__(w)
            del self.join2, self.join1, self.out
            self.up2 = nn.Sequential(_conv_relu(6 * w, 2 * w), _conv_relu(2 * w, 2 * w))
            self.up1 = nn.Sequential(_conv_relu(3 * w, w), nn.Conv2d(w, 1, 3, 1, 1))

        @staticmethod
        def _join(block, skip, deep):
            conv, c = block[0][0], skip.shape[1]
            deep = F.interpolate(deep, size=skip.shape[-2:], mode="nearest")
            y = F.conv2d(skip, conv.weight[:, :c], conv.bias, padding=1)
            y = y + F.conv2d(deep, conv.weight[:, c:], None, padding=1)
            return block[1:](F.relu(y))

        def forward_logits(self, x):
            a = self.down1(x)
            b = self.down2(a)
            b = self._join(self.up2, b, self.bottom(b))
            return torch.logit(x.clamp(0.02, 0.98)) + self._join(self.up1, a, b)

    class ConcatDenoiser(NearestJoinDenoiser):
        @staticmethod
        def _join(block, skip, deep):
            deep = F.interpolate(deep, size=skip.shape[-2:], mode="nearest")
            return block(torch.cat([skip, deep], 1))

    class DepthToSpaceUpConv(UpConv):
        """UpConv's sub-pixel form with the pixel shuffle exported as DepthToSpace."""

        def forward(self, x, output_size=None):
            if not torch.onnx.is_in_onnx_export():
                return super().forward(x, output_size)
            y = F.conv2d(x, self.subpixel_weight(), self.bias.repeat_interleave(4), padding=1)
            return F.pixel_shuffle(y, 2)

    def decoder_with(make_layer: Callable[[nn.ConvTranspose2d], nn.Module]) -> nn.Module:
        """ConvDecoder with each transposed conv replaced by `make_layer(it)`."""
        decoder = ConvDecoder(d, w)
        for i, layer in enumerate(decoder.net):
            if isinstance(layer, nn.ConvTranspose2d):
                decoder.net[i] = make_layer(layer)
        return decoder

    def convtranspose_decoder() -> nn.Module:
        return decoder_with(lambda up: nn.ConvTranspose2d(up.in_channels, up.out_channels, 4, 2, 1))

    def all_subpixel_decoder() -> nn.Module:
        return decoder_with(lambda up: UpConv(up.in_channels, up.out_channels))

    def all_gemm_decoder() -> nn.Module:
        return decoder_with(lambda up: UpConv(up.in_channels, up.out_channels, gemm_export=True))

    def depth_to_space_decoder() -> nn.Module:
        return decoder_with(lambda up: DepthToSpaceUpConv(up.in_channels, up.out_channels))

    w, d = 32, 16
    relu = nn.ReLU
    return {
        "encoder.shipped": (lambda: ConvEncoder(d, w), (1, 28, 28)),
        "encoder.vgg": (lambda: nn.Sequential(
            nn.Conv2d(1, w, 3, 1, 1), relu(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, 1, 1), relu(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), relu(), nn.Flatten(), nn.Linear(4 * w * 16, d),
        ), (1, 28, 28)),
        "encoder.conv3s2": (lambda: nn.Sequential(
            nn.Conv2d(1, w, 3, 2, 1), relu(), nn.Conv2d(w, 2 * w, 3, 1, 1), relu(),
            nn.MaxPool2d(2), nn.Conv2d(2 * w, 4 * w, 3, 2, 1), relu(), nn.Flatten(),
            nn.Linear(4 * w * 16, d),
        ), (1, 28, 28)),
        "decoder.shipped": (lambda: ConvDecoder(d, w), (d,)),
        "decoder.convtranspose": (convtranspose_decoder, (d,)),
        "decoder.all_subpixel": (all_subpixel_decoder, (d,)),
        "decoder.all_gemm": (all_gemm_decoder, (d,)),
        "decoder.depth_to_space": (depth_to_space_decoder, (d,)),
        "decoder.resize_conv": (lambda: nn.Sequential(
            nn.Linear(d, 4 * w * 16), relu(), nn.Unflatten(1, (4 * w, 4, 4)),
            Resize(7), nn.Conv2d(4 * w, 2 * w, 3, 1, 1), relu(),
            Resize(14), nn.Conv2d(2 * w, w, 3, 1, 1), relu(), nn.Conv2d(w, w, 3, 1, 1), relu(),
            Resize(28), nn.Conv2d(w, 1, 3, 1, 1),
        ), (d,)),
        "decoder.pixel_shuffle": (lambda: nn.Sequential(
            nn.Linear(d, 256), relu(), nn.Linear(256, 2 * w * 49), relu(),
            nn.Unflatten(1, (2 * w, 7, 7)),
            nn.Conv2d(2 * w, 4 * w, 3, 1, 1), PixelShuffle(2), relu(),
            nn.Conv2d(w, w, 3, 1, 1), relu(), nn.Conv2d(w, 4, 3, 1, 1), PixelShuffle(2),
        ), (d,)),
        "denoiser.shipped": (lambda: Denoiser(), (1, 28, 28)),
        "denoiser.shipped.int8": (lambda: Denoiser(), (1, 28, 28)),
        "denoiser.nearest_join": (lambda: NearestJoinDenoiser(), (1, 28, 28)),
        "denoiser.nearest_join.int8": (lambda: NearestJoinDenoiser(), (1, 28, 28)),
        "denoiser.concat": (lambda: ConcatDenoiser(), (1, 28, 28)),
    }


def _train_step_ms(module, shape: tuple[int, ...], reps: int) -> float:
    import torch

    optimizer = torch.optim.Adam(module.parameters())
    x = torch.rand(128, *shape)
    times = []
    for _ in range(reps + 2):
        t = time.perf_counter()
        loss = module(x).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times[2:])


def measure(names: list[str] | None = None, batch: int = 256, threads: int = 2,
            min_time: float = 1.0, train_reps: int = 6) -> list[dict]:
    import onnxruntime as ort
    import torch

    from benchmarks.inprocess import alternating_blocks, warm_heap
    from service.registry import session_options
    from training.export import export_graph
    from training.models import Graph
    from training.quantize import quantize

    rows = []
    warm_heap()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, shape) in _candidates().items():
            if names and name not in names:
                continue
            torch.manual_seed(0)
            module = build().eval()
            axes = {"x": {0: "N"}}
            example = torch.rand(2, *shape) if len(shape) == 3 else torch.randn(2, *shape)
            path = Path(tmp) / f"{name}.onnx"
            export_graph(Graph(module, (example,), ["x"], ["y"], axes), path)
            if name.endswith(".int8"):
                calibration = np.random.default_rng(0).random((256, *shape), np.float32)
                quantize(path, path.with_suffix(".q.onnx"), calibration)
                path = path.with_suffix(".q.onnx")
            session = ort.InferenceSession(str(path), session_options(threads),
                                           providers=["CPUExecutionProvider"])
            x = torch.rand(batch, *shape) if len(shape) == 3 else torch.randn(batch, *shape)
            feeds = {"x": x.numpy()}
            torch.set_num_threads(threads)

            def run_torch(module=module, x=x):
                with torch.inference_mode():
                    module(x)

            times = alternating_blocks(run_torch, lambda s=session, f=feeds: s.run(None, f),
                                       min_time)
            t_torch, t_ort = (statistics.median(t) for t in times)
            torch.set_num_threads(1)
            step = _train_step_ms(build().train(), shape, train_reps)
            row = {
                "graph": name,
                "params": sum(p.numel() for p in module.parameters()),
                "torch_ms": 1e3 * t_torch,
                "ort_ms": 1e3 * t_ort,
                "ratio": t_torch / t_ort,
                "train_step_ms_1thread": step,
            }
            print(f"{name:24s} params {row['params'] / 1e3:7.1f}k  torch {row['torch_ms']:7.2f} ms"
                  f"  ort {row['ort_ms']:7.2f} ms  ratio {row['ratio']:5.2f}x"
                  f"  train step {step:6.1f} ms", flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.architectures",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="candidate names (default: all)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="timing per runtime and candidate (at least)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    np.random.seed(0)
    rows = measure(args.only, args.batch, args.threads, args.seconds)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
