"""The autoencoder family: one small convolutional encoder/decoder pair, six models.

Each model is an `nn.Module` with
- `loss(batch) -> (loss, logs)`: the training objective on a `Batch`;
- `graphs() -> dict[role, Graph]`: the modules to export to ONNX, with their
  input/output names and dynamic axes (see `service/manifest.py` for the contract).

`MODELS` maps a model name to its builder; checkpoints store the builder's
keyword arguments so that whoever loads weights can rebuild the model.

Choices, and why:
- Strided convs down (28 -> 14 -> 7) and transposed convs up: cheap to train on
  2 CPU cores. onnxruntime runs transposed convs slowly, so `UpConv` exports
  itself as the same function in a form it runs fast (a 3x3 conv + pixel shuffle,
  or a matmul + Col2Im), and every pixel shuffle exports as Col2Im rather than
  DepthToSpace (`pixel_shuffle`).
- VAEs use a Bernoulli likelihood on dynamically binarized pixels (Kingma &
  Welling 2014; Burda et al. 2016 for the IWAE bound used in evaluation) and the
  closed-form Gaussian KL. Their decoders export `logits` beside the
  probabilities so that evaluation computes exact log-likelihoods.
- The denoiser and upscalers are fully convolutional (any H, W): a residual
  U-Net (denoiser) and an ESPCN-style sub-pixel network (upscalers;
  Shi et al. 2016), both predicting a correction to a cheap estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


@dataclass
class Batch:
    """What a training step sees. `target` is the clean image; `inputs` what the model gets."""

    inputs: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor


@dataclass
class Graph:
    """One module to export, with its ONNX signature."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dims, per example."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    """Float one-hot made by comparison, which exports to plain ONNX ops."""
    classes = torch.arange(NUM_CLASSES, device=labels.device)
    return (labels.unsqueeze(1) == classes).float()


def pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """`F.pixel_shuffle(x, r)`, exported as ONNX Col2Im instead of DepthToSpace.

    Why: onnxruntime's CPU DepthToSpace is a generic 6-D transpose, while Col2Im
    with an r x r block and stride r (no overlap) is the same rearrangement done as
    block copies: the AE decoder takes 13.9 ms instead of 16.2 at batch 256
    (`python -m benchmarks.architectures`: decoder.all_subpixel vs
    decoder.depth_to_space). Col2Im reads channel c*r*r + a*r + b into pixel
    (r*i+a, r*j+b) of channel c, which is pixel shuffle's order; `F.fold` is torch's Col2Im.
    """
    if not torch.onnx.is_in_onnx_export():
        return F.pixel_shuffle(x, r)
    n, c, h, w = x.shape
    return F.fold(x.reshape(n, c, h * w), (r * h, r * w), kernel_size=r, stride=r)


class PixelShuffle(nn.PixelShuffle):
    """`nn.PixelShuffle` that exports through `pixel_shuffle` (Col2Im); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.upscale_factor)


class UpConv(nn.ConvTranspose2d):
    """A 4x4 stride-2 transposed conv (doubles H and W) that exports in a form
    onnxruntime runs fast, computing the same function.

    Why: onnxruntime's CPU ConvTranspose is slow. Two exact forms are faster, each
    where the other is weak (`python -m benchmarks.architectures`, batch 256, the AE
    decoder: as ConvTranspose 23.5 ms, all GEMM 15.3, all sub-pixel 13.9, shipped
    12.8, which is sub-pixel for 64 -> 32 channels and GEMM for the last layer, 32 -> 1):

    - sub-pixel (the default): output pixel (2m+a, 2n+b) sees input rows {m-1, m}
      (a=0) or {m, m+1} (a=1) through taps (3, 1) or (2, 0) of the 4x4 kernel, so
      one 3x3 conv with 4*out channels (zeros where a phase has no tap), then a
      pixel shuffle, reproduces it. 36/16 of the multiply-adds, but in the
      runtime's blocked conv, which runs near the machine's peak;
    - GEMM (`gemm_export=True`): the transposed conv's own definition, a matmul to
      [16*out, H*W] columns and an overlapping Col2Im. The fewest multiply-adds,
      and no conv padded out to a 16-channel block: the one to use for few
      output channels (the decoders' last layer, 1 channel).

    Training keeps the transposed conv, which torch runs fast; the state dict is
    ConvTranspose2d's, so checkpoints load unchanged whichever form exports.
    """

    # 3x3 offset -> 4x4 tap, per output phase; 4 is the zero tap added by padding.
    TAPS = (3, 1, 4, 4, 2, 0)

    def __init__(self, cin: int, cout: int, gemm_export: bool = False):
        super().__init__(cin, cout, 4, 2, 1)
        self.gemm_export = gemm_export

    def subpixel_weight(self) -> torch.Tensor:
        """The [4*out, in, 3, 3] kernel; output channel c*4 + a*2 + b is phase (a, b) of c."""
        cin, cout = self.in_channels, self.out_channels
        taps = torch.tensor(self.TAPS, device=self.weight.device)
        w = F.pad(self.weight, (0, 1, 0, 1))  # [in, out, 5, 5]; row/col 4 is zero
        w = w.index_select(2, taps).index_select(3, taps)  # [in, out, (a,i), (b,j)]
        w = w.reshape(cin, cout, 2, 3, 2, 3).permute(1, 2, 4, 0, 3, 5)
        return w.reshape(4 * cout, cin, 3, 3)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x, output_size)
        if self.gemm_export:
            return self._gemm_form(x)
        bias = self.bias.repeat_interleave(4) if self.bias is not None else None
        return pixel_shuffle(F.conv2d(x, self.subpixel_weight(), bias, padding=1), 2)

    def _gemm_form(self, x: torch.Tensor) -> torch.Tensor:
        n, cin, h, w = x.shape
        columns = torch.matmul(self.weight.reshape(cin, -1).t(), x.reshape(n, cin, h * w))
        y = F.fold(columns, (2 * h, 2 * w), kernel_size=4, stride=2, padding=1)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


class ConvEncoder(nn.Module):
    """[N,1,28,28] (+ optional extra vector) -> [N,out]."""

    def __init__(self, out: int, width: int = 32, hidden: int = 256, extra: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.ReLU(),  # 14x14
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(),  # 7x7
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width * 49 + extra, hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        return self.head(h)


class ConvDecoder(nn.Module):
    """[N,in] -> logits [N,1,28,28]."""

    def __init__(self, latent: int, width: int = 32, hidden: int = 256):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(),
            nn.Linear(hidden, 2 * width * 49), nn.ReLU(),
            nn.Unflatten(1, (2 * width, 7, 7)),
            UpConv(2 * width, width), nn.ReLU(),  # 14x14
            nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(),
            UpConv(width, 1, gemm_export=True),  # 28x28 logits
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


BATCH_AXIS = {0: "N"}


class Autoencoder(nn.Module):
    """Deterministic AE, trained with per-pixel BCE (sharper than MSE on near-binary digits)."""

    task = "autoencoder"

    def __init__(self, latent_dim: int = 16, width: int = 32, hidden: int = 256):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim, width, hidden)
        self.decoder = ConvDecoder(latent_dim, width, hidden)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.decoder(self.encoder(batch.inputs))
        bce = F.binary_cross_entropy_with_logits(logits, batch.target)
        mse = F.mse_loss(torch.sigmoid(logits), batch.target)
        return bce, {"bce": bce.item(), "mse": mse.item()}

    def graphs(self) -> dict[str, Graph]:
        image = torch.rand(2, 1, 28, 28)
        z = torch.randn(2, self.latent_dim)
        return {
            "encoder": Graph(self.encoder, (image,), ["image"], ["latent"],
                             {"image": BATCH_AXIS, "latent": BATCH_AXIS}),
            "decoder": Graph(_Sigmoid(self.decoder), (z,), ["latent"], ["image"],
                             {"latent": BATCH_AXIS, "image": BATCH_AXIS}),
        }


class VAE(nn.Module):
    """Convolutional VAE with a Bernoulli decoder; optionally class-conditioned (CVAE)."""

    task = "vae"

    def __init__(self, latent_dim: int = 16, width: int = 32, hidden: int = 256,
                 conditional: bool = False, beta: float = 1.0):
        super().__init__()
        self.latent_dim, self.conditional, self.beta = latent_dim, conditional, beta
        extra = NUM_CLASSES if conditional else 0
        self.encoder = ConvEncoder(2 * latent_dim, width, hidden, extra=extra)
        self.decoder = ConvDecoder(latent_dim + extra, width, hidden)
        self.kl_weight = 1.0  # set by the trainer during KL warm-up
        if conditional:
            self.task = "cvae"

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        h = self.encoder(x, one_hot(labels) if self.conditional else None)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional:
            z = torch.cat([z, one_hot(labels)], dim=1)
        return self.decoder(z)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch.labels if self.conditional else None
        mean, logvar = self.encode(batch.inputs, labels)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()  # reparameterization
        logits = self.decode_logits(z, labels)
        rec = F.binary_cross_entropy_with_logits(logits, batch.target, reduction="none")
        rec = rec.flatten(1).sum(1)
        kl = kl_standard_normal(mean, logvar)
        loss = (rec + self.beta * self.kl_weight * kl).mean()
        elbo = -(rec + kl).mean()
        return loss, {"rec": rec.mean().item(), "kl": kl.mean().item(), "neg_elbo": -elbo.item()}

    def graphs(self) -> dict[str, Graph]:
        image = torch.rand(2, 1, 28, 28)
        z = torch.randn(2, self.latent_dim)
        labels = torch.tensor([3, 7])
        axes = {n: BATCH_AXIS for n in ("image", "label", "latent", "mean", "logvar", "logits")}
        if self.conditional:
            return {
                "encoder": Graph(_CondEncoder(self), (image, labels), ["image", "label"],
                                 ["mean", "logvar"], axes),
                "decoder": Graph(_CondDecoder(self), (z, labels), ["latent", "label"],
                                 ["image", "logits"], axes),
            }
        return {
            "encoder": Graph(_Encoder(self), (image,), ["image"], ["mean", "logvar"], axes),
            "decoder": Graph(_Decoder(self), (z,), ["latent"], ["image", "logits"], axes),
        }


def _conv_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())


class SkipJoin(nn.Module):
    """Where a U-Net's deep path comes back up: `relu(conv(skip) + up(deep))`.

    `up` is a sub-pixel conv (3x3 conv at the deep, half resolution, then a pixel
    shuffle), cropped to the skip's exact size, so odd H and W need no padding. It
    contains "nearest resize, then a 3x3 conv of the concatenation" (the usual
    join, shipped before) as a special case, with the same multiply-adds for the
    deep channels, and it quantizes to int8 without a Resize in the way
    (denoiser.* in `python -m benchmarks.architectures`).
    """

    def __init__(self, skip_channels: int, deep_channels: int):
        super().__init__()
        self.skip = nn.Conv2d(skip_channels, skip_channels, 3, 1, 1)
        self.deep = nn.Conv2d(deep_channels, 4 * skip_channels, 3, 1, 1, bias=False)
        self.shuffle = PixelShuffle(2)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        up = self.shuffle(self.deep(deep))[..., : skip.shape[-2], : skip.shape[-1]]
        return F.relu(self.skip(skip) + up)


class Denoiser(nn.Module):
    """Blind denoiser: a small U-Net (Ronneberger et al. 2015), three scales, any H and W.

    Why a U-Net: at sigma 0.5 a pixel's neighbourhood says little, so the net needs
    context from far away; two stride-2 levels give it cheaply (a 7-layer dilated
    stack of width 24 was 0.7 dB short of the sigma-0.5 bar on MNIST and 1.4x slower
    in onnxruntime). Going down uses stride-2 convs (ceil(H/2), so odd sizes work);
    coming up, `SkipJoin` brings the deep path back to the skip's exact size. Every
    full-resolution layer is kept: with the work at half resolution, isolated
    salt-and-pepper pixels were not fixed well enough (docs/PERFORMANCE.md).
    """

    task = "denoise"

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.down1 = nn.Sequential(_conv_relu(1, w), _conv_relu(w, w))  # H
        self.down2 = nn.Sequential(_conv_relu(w, 2 * w, 2), _conv_relu(2 * w, 2 * w))  # H/2
        self.bottom = nn.Sequential(_conv_relu(2 * w, 4 * w, 2), _conv_relu(4 * w, 4 * w),
                                    _conv_relu(4 * w, 4 * w))  # H/4
        self.join2 = SkipJoin(2 * w, 4 * w)
        self.up2 = nn.Sequential(_conv_relu(2 * w, 2 * w), _conv_relu(2 * w, 2 * w))  # H/2
        self.join1 = SkipJoin(w, 2 * w)
        self.out = nn.Conv2d(w, 1, 3, 1, 1)  # H

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        # Predict a correction in logit space around the noisy input; sigmoid keeps [0,1].
        a = self.down1(x)
        b = self.down2(a)
        b = self.up2(self.join2(b, self.bottom(b)))
        return torch.logit(x.clamp(0.02, 0.98)) + self.out(self.join1(a, b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x))

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.forward_logits(batch.inputs)
        mse = F.mse_loss(torch.sigmoid(logits), batch.target)
        return mse, {"mse": mse.item()}

    def graphs(self) -> dict[str, Graph]:
        axes = {"image": {0: "N", 2: "H", 3: "W"}}
        return {"model": Graph(self, (torch.rand(2, 1, 28, 28),), ["image"], ["output"], axes)}


class Upscaler(nn.Module):
    """Sub-pixel super-resolution: convs at low resolution, then PixelShuffle by `scale`."""

    task = "upscale"

    def __init__(self, scale: int = 2, width: int = 48, depth: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(1, width, 5, 1, 2), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, 1, 1), nn.ReLU()]
        layers += [nn.Conv2d(width, scale * scale, 3, 1, 1), PixelShuffle(scale)]
        self.net = nn.Sequential(*layers)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return torch.logit(base.clamp(0.02, 0.98)) + self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x))

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mse = F.mse_loss(self(batch.inputs), batch.target)
        return mse, {"mse": mse.item()}

    def graphs(self) -> dict[str, Graph]:
        small = 28 // self.scale
        axes = {"image": {0: "N", 2: "H", 3: "W"}}
        return {"model": Graph(self, (torch.rand(2, 1, small, small),), ["image"], ["output"],
                               axes)}


# Export wrappers: one forward each, so ONNX graphs have exactly the contract's signature.
class _Sigmoid(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.inner(z))


class _Encoder(nn.Module):
    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor):
        return self.vae.encode(image)


class _Decoder(_Encoder):
    def forward(self, z: torch.Tensor):
        logits = self.vae.decode_logits(z)
        return torch.sigmoid(logits), logits


class _CondEncoder(_Encoder):
    def forward(self, image: torch.Tensor, label: torch.Tensor):
        return self.vae.encode(image, label)


class _CondDecoder(_Encoder):
    def forward(self, z: torch.Tensor, label: torch.Tensor):
        logits = self.vae.decode_logits(z, label)
        return torch.sigmoid(logits), logits


MODELS: dict[str, Callable[..., nn.Module]] = {
    "ae": lambda **kw: Autoencoder(**{"latent_dim": 16, **kw}),
    "vae": lambda **kw: VAE(**{"latent_dim": 16, **kw}),
    "vae2d": lambda **kw: VAE(**{"latent_dim": 2, **kw}),
    "cvae": lambda **kw: VAE(**{"latent_dim": 16, "conditional": True, **kw}),
    "denoiser": lambda **kw: Denoiser(**kw),
    "upscaler_x2": lambda **kw: Upscaler(**{"scale": 2, **kw}),
    "upscaler_x4": lambda **kw: Upscaler(**{"scale": 4, "width": 64, "depth": 6, **kw}),
}


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
