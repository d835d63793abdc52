"""Each model's shapes, a loss that falls, and the VAE's KL term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.data import synthetic_dataset
from training.models import MODELS, UpConv, build_model, kl_standard_normal, one_hot
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


@pytest.mark.parametrize(("cin", "cout", "side"), [(6, 3, 7), (4, 1, 5)])
def test_upconv_export_form_is_the_transposed_conv(cin, cout, side):
    """The 3x3 conv + pixel shuffle that UpConv exports computes the transposed conv."""
    torch.manual_seed(0)
    up = UpConv(cin, cout)
    x = torch.randn(2, cin, side, side)
    with torch.no_grad():
        expected = up(x)
        bias = up.bias.repeat_interleave(4)
        got = F.pixel_shuffle(F.conv2d(x, up.subpixel_weight(), bias, padding=1), 2)
    assert got.shape == (2, cout, 2 * side, 2 * side)
    assert torch.allclose(got, expected, atol=1e-5)


def test_denoiser_join_is_conv_of_the_concatenation():
    """The split-kernel join equals convolving the concatenated skip and resized deep path."""
    torch.manual_seed(0)
    model = build_model("denoiser", width=4).eval()
    skip, deep = torch.randn(2, 4, 9, 11), torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        joined = torch.cat([skip, F.interpolate(deep, size=(9, 11), mode="nearest")], 1)
        expected = model.up1(joined)
        got = model._join(model.up1, skip, deep)
    assert torch.allclose(got, expected, atol=1e-5)
