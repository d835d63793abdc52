"""Each model's shapes, a loss that falls, and the VAE's KL term."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from training.data import synthetic_dataset
from training.export import export_graph
from training.models import (
    MODELS,
    Graph,
    PixelShuffle,
    SkipJoin,
    UpConv,
    build_model,
    kl_standard_normal,
    one_hot,
)
from training.train import make_batch

TINY = {"width": 8}
SMALL_KWARGS = {
    "ae": TINY, "vae": TINY, "vae2d": TINY, "cvae": TINY,
    "denoiser": {"width": 4}, "upscaler_x2": TINY, "upscaler_x4": TINY,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_graph_shapes(name):
    model = build_model(name, **SMALL_KWARGS[name]).eval()
    for role, graph in model.graphs().items():
        with torch.no_grad():
            out = graph.module(*graph.example)
        outs = out if isinstance(out, tuple) else (out,)
        assert len(outs) == len(graph.output_names)
        n = graph.example[0].shape[0]
        if model.task in ("autoencoder", "vae", "cvae") and role == "encoder":
            assert all(o.shape == (n, model.latent_dim) for o in outs)
        else:
            scale = getattr(model, "scale", 1)
            side = graph.example[0].shape[-1] * scale if role == "model" else 28
            assert outs[0].shape == (n, 1, side, side)
            assert outs[0].min() >= 0.0 and outs[0].max() <= 1.0


@pytest.mark.parametrize("name", ["denoiser", "upscaler_x2", "upscaler_x4"])
def test_fully_convolutional_models_take_any_size(name):
    model = build_model(name, **SMALL_KWARGS[name]).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 13, 40))
    scale = getattr(model, "scale", 1)
    assert out.shape == (3, 1, 13 * scale, 40 * scale)


@pytest.mark.parametrize("name", list(MODELS))
def test_loss_falls_on_a_small_batch(name):
    torch.manual_seed(0)
    data = synthetic_dataset(n_train=64, n_test=8)["train"]
    model = build_model(name, **SMALL_KWARGS[name])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    batch = make_batch(name, data.images, data.labels, rng)
    losses = []
    for _ in range(40):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses[::10]


def test_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mean = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[0.2, -0.7, 0.0]])
    std = (0.5 * logvar).exp()
    z = mean + std * torch.randn(400_000, 3)
    log_q = torch.distributions.Normal(mean, std).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    monte_carlo = (log_q - log_p).mean()
    assert kl_standard_normal(mean, logvar).item() == pytest.approx(monte_carlo.item(), abs=0.01)
    assert kl_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_one_hot():
    assert one_hot(torch.tensor([2, 0])).tolist()[0] == [0, 0, 1] + [0] * 7


def test_cvae_decoder_depends_on_the_label():
    model = build_model("cvae", **TINY).eval()
    z = torch.zeros(1, 16)
    with torch.no_grad():
        a = model.decode_logits(z, torch.tensor([1]))
        b = model.decode_logits(z, torch.tensor([7]))
    assert not torch.allclose(a, b)


def test_unknown_model():
    with pytest.raises(KeyError, match="unknown model 'gan'"):
        build_model("gan")


def _exported(module: torch.nn.Module, channels: int, tmp_path) -> ort.InferenceSession:
    """`module` through the project's exporter, with dynamic N, H and W."""
    axes = {"x": {0: "N", 2: "H", 3: "W"}}
    graph = Graph(module, (torch.randn(2, channels, 5, 6),), ["x"], ["y"], axes)
    path = tmp_path / "layer.onnx"
    export_graph(graph, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("gemm", [False, True], ids=["subpixel", "gemm"])
def test_upconv_exports_the_transposed_conv(gemm, tmp_path):
    """Either export form of UpConv computes the transposed conv, at any H and W,
    in Conv/MatMul + Col2Im (no ConvTranspose, no DepthToSpace)."""
    torch.manual_seed(0)
    up = UpConv(6, 3, gemm_export=gemm).eval()
    session = _exported(up, 6, tmp_path)
    ops = {node.op_type for node in onnx.load(tmp_path / "layer.onnx").graph.node}
    assert "Col2Im" in ops and not ops & {"ConvTranspose", "DepthToSpace"}
    for shape in [(3, 6, 7, 7), (1, 6, 4, 9)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = up(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
        assert np.abs(got - expected).max() < 1e-5


@pytest.mark.parametrize("r", [2, 4])
def test_pixel_shuffle_exports_as_col2im(r, tmp_path):
    session = _exported(PixelShuffle(r), r * r * 3, tmp_path)
    x = torch.randn(2, r * r * 3, 5, 7)
    got = session.run(None, {"x": x.numpy()})[0]
    assert np.array_equal(got, F.pixel_shuffle(x, r).numpy())


def _subpixel_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel at half resolution that, pixel-shuffled, equals `kernel` (3x3, full
    resolution) applied after a nearest 2x upsampling: output (2i+a, 2j+b) tap (ky, kx)
    reads deep pixel (i + (a+ky-1)//2, j + (b+kx-1)//2)."""
    cout, cin = kernel.shape[:2]
    out = torch.zeros(cout, 2, 2, cin, 3, 3)
    for a, b, ky, kx in itertools.product(range(2), range(2), range(3), range(3)):
        out[:, a, b, :, (a + ky - 1) // 2 + 1, (b + kx - 1) // 2 + 1] += kernel[:, :, ky, kx]
    return out.reshape(4 * cout, cin, 3, 3)


def test_skip_join_contains_the_nearest_resize_join():
    """`SkipJoin` can compute the usual U-Net join, a 3x3 conv of the concatenated skip and
    nearest-resized deep path (the shipped join before it), at even sizes; at odd sizes
    it crops to the skip's size."""
    torch.manual_seed(0)
    skip_c, deep_c = 4, 8
    concat = torch.nn.Conv2d(skip_c + deep_c, skip_c, 3, 1, 1)
    join = SkipJoin(skip_c, deep_c)
    with torch.no_grad():
        join.skip.weight.copy_(concat.weight[:, :skip_c])
        join.skip.bias.copy_(concat.bias)
        join.deep.weight.copy_(_subpixel_kernel(concat.weight[:, skip_c:]))
        skip, deep = torch.randn(2, skip_c, 10, 12), torch.randn(2, deep_c, 5, 6)
        resized = F.interpolate(deep, size=(10, 12), mode="nearest")
        expected = F.relu(concat(torch.cat([skip, resized], 1)))
        assert torch.allclose(join(skip, deep), expected, atol=1e-5)
        assert join(torch.randn(2, skip_c, 9, 11), deep).shape == (2, skip_c, 9, 11)
