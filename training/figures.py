"""Pictures a person would rather look at than tables, drawn from the exported ONNX models.

`make_figures(dataset, models_dir, data_dir)` writes PNGs to
`<models_dir>/<dataset>/figures/` (so `exported_models/mnist/figures/...`), which
the model card links to. Every figure uses fixed test images and fixed seeds, so
re-running it on the same models redraws the same pictures:

    reconstructions.png   test images, their `ae` / `vae` reconstructions and PCA's
    denoising.png         clean, noisy, linear MMSE and `denoiser` at each test condition
    upscaling.png         low-res input, bicubic, linear MMSE, `upscaler_x2/x4`, original
    cvae_samples.png      10 samples of each requested class (one row per class)
    vae2d_latent_map.png  test-set posterior means of `vae2d`, coloured by class
    vae2d_manifold.png    images decoded on a grid spanning that same map
    other_dataset.png     the `ae` of this dataset fed images of the other one (known limit)
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from service.manifest import ModelEntry, load_manifest  # noqa: E402
from training import baselines  # noqa: E402
from training.data import DATASETS, Split, data_available, load_dataset  # noqa: E402
from training.evaluate import SEED, OnnxModel, decode, encode  # noqa: E402
from training.transforms import downsample  # noqa: E402

log = logging.getLogger(__name__)

N_COLUMNS = 10
GAP = 2  # pixels between tiles
GAP_VALUE = 0.45  # mid grey: tiles stay distinct on black (digits) and white (clothes) edges


def figures_dir(models_dir: Path, dataset: str) -> Path:
    return Path(models_dir) / dataset / "figures"


def pick_images(test: Split, n: int = N_COLUMNS) -> np.ndarray:
    """Indices of the first test image of each class, in class order (then the next ones)."""
    first = [int(np.flatnonzero(test.labels == c)[0]) for c in np.unique(test.labels)]
    rest = [i for i in range(len(test)) if i not in first]
    return np.array((first + rest)[:n])


def strip(images: np.ndarray, scale: int = 1) -> np.ndarray:
    """[N,1,H,W] or [N,H,W] -> one row of tiles [H, N*(W+GAP)-GAP], grey gaps."""
    tiles = np.asarray(images, np.float32).reshape(len(images), *images.shape[-2:])
    if scale > 1:  # nearest-neighbour enlargement, to show small inputs at full size
        tiles = tiles.repeat(scale, -1).repeat(scale, -2)
    h, w = tiles.shape[-2:]
    out = np.full((h, len(tiles) * (w + GAP) - GAP), GAP_VALUE, np.float32)
    for i, tile in enumerate(tiles):
        out[:, i * (w + GAP) : i * (w + GAP) + w] = np.clip(tile, 0, 1)
    return out


def rows_figure(rows: list[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
    """One labelled strip of tiles per row, stacked; pixels shown as stored (0 = black)."""
    width = max(r.shape[1] for _, r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(width / 28 * 0.9 + 1.6, len(rows) * 0.95 + 0.5),
                             squeeze=False)
    for ax, (label, row) in zip(axes[:, 0], rows, strict=True):
        ax.imshow(row, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def _psnr_label(name: str, pred: np.ndarray, clean: np.ndarray) -> str:
    from training.metrics import psnr

    return f"{name}\n{psnr(pred, clean):.1f} dB"


# ---------------------------------------------------------------- the figures


def fig_reconstructions(models: dict, ctx: dict, out: Path) -> Path | None:
    if not {"ae", "vae"} & set(models):
        return None
    x = ctx["test"].images[ctx["picks"]]
    rows = [("test image", strip(x))]
    for name in ("ae", "vae"):
        if name in models:
            rows.append((f"{name}", strip(decode(models[name], encode(models[name], x)))))
    d = models["ae" if "ae" in models else "vae"].entry.latent_dim
    pca = baselines.PCABaseline.fit(ctx["train"].images, d)
    rows.append((f"PCA-{d}", strip(pca.reconstruct(x))))
    return rows_figure(rows, out / "reconstructions.png",
                       f"{ctx['dataset']}: reconstructions (ae, vae from its posterior mean)")


def fig_denoising(models: dict, ctx: dict, out: Path) -> Path | None:
    if "denoiser" not in models:
        return None
    clean = ctx["test"].images[ctx["picks"]]
    rows = [("clean", strip(clean))]
    train = ctx["train"].images
    for cond in baselines.CONDITIONS:
        noisy = baselines.corrupt(ctx["test"].images, cond)[ctx["picks"]]
        wiener = baselines.denoise_baselines(train, noisy, cond)["linear_mmse_clipped"]
        model = models["denoiser"].run("model", noisy)["output"]
        label = cond.name.replace("_", " ").replace("gaussian", "Gaussian σ").replace(
            "salt pepper", "salt & pepper p")
        rows += [(f"{label}\nnoisy", strip(noisy)),
                 ("linear MMSE", strip(wiener)),
                 ("denoiser", strip(model))]
    return rows_figure(rows, out / "denoising.png",
                       f"{ctx['dataset']}: denoising (the model is blind to the noise level)")


def fig_upscaling(models: dict, ctx: dict, out: Path) -> Path | None:
    names = [n for n in ("upscaler_x2", "upscaler_x4") if n in models]
    if not names:
        return None
    clean = ctx["test"].images[ctx["picks"]]
    rows = []
    for name in names:
        f = models[name].entry.scale
        low = downsample(clean, f)
        linear = baselines.upscale_baselines(ctx["train"].images, low, f)["linear_mmse_clipped"]
        rows += [(f"x{f} input\n({28 // f}x{28 // f})", strip(low, scale=f)),
                 ("bicubic", strip(baselines.bicubic_upscale(low, f, clip=True))),
                 ("linear MMSE", strip(linear)),
                 (name, strip(models[name].run("model", low)["output"]))]
    rows.append(("original", strip(clean)))
    return rows_figure(rows, out / "upscaling.png",
                       f"{ctx['dataset']}: super-resolution of average-pooled images")


def fig_cvae_samples(models: dict, ctx: dict, out: Path) -> Path | None:
    if "cvae" not in models:
        return None
    model = models["cvae"]
    labels = np.repeat(np.arange(10), N_COLUMNS)
    z = np.random.default_rng(SEED).standard_normal((len(labels), model.entry.latent_dim))
    images = decode(model, z.astype(np.float32), labels)
    rows = [(ctx["class_names"][c], strip(images[labels == c])) for c in range(10)]
    return rows_figure(rows, out / "cvae_samples.png",
                       f"{ctx['dataset']}: cvae samples, z ~ N(0, I), one row per requested class")


def _latent_extent(means: np.ndarray) -> tuple[float, float, float, float]:
    lo, hi = np.percentile(means, [0.5, 99.5], axis=0)
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def fig_latent_map(models: dict, ctx: dict, out: Path) -> list[Path]:
    if "vae2d" not in models:
        return []
    model, test = models["vae2d"], ctx["test"]
    means = encode(model, test.images)
    x0, x1, y0, y1 = _latent_extent(means)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    cmap = plt.get_cmap("tab10")
    for c in range(10):
        sel = test.labels == c
        ax.scatter(means[sel, 0], means[sel, 1], s=2, alpha=0.6, color=cmap(c),
                   label=ctx["class_names"][c], rasterized=True)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.legend(markerscale=5, fontsize=8, loc="upper right", framealpha=0.85)
    ax.set_title(f"{ctx['dataset']}: vae2d posterior means of the {len(test)} test images")
    fig.tight_layout()
    paths = [_save(fig, out / "vae2d_latent_map.png")]

    n = 20
    xs, ys = np.linspace(x0, x1, n), np.linspace(y1, y0, n)  # top row = high z2, as on the map
    grid = np.array([[x, y] for y in ys for x in xs], np.float32)
    images = decode(model, grid).reshape(n, n, 28, 28)
    canvas = np.zeros((n * 28, n * 28), np.float32)
    for i in range(n):
        for j in range(n):
            canvas[i * 28 : (i + 1) * 28, j * 28 : (j + 1) * 28] = images[i, j]
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, extent=(x0, x1, y0, y1),
              interpolation="nearest", aspect="auto")
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(f"{ctx['dataset']}: vae2d decoded on a {n}x{n} grid over the same map")
    fig.tight_layout()
    paths.append(_save(fig, out / "vae2d_manifold.png"))
    return paths


def fig_other_dataset(models: dict, ctx: dict, out: Path) -> Path | None:
    if "ae" not in models or not ctx["other"]:
        return None
    rows = []
    for name, split in ctx["other"].items():
        x = split.images[pick_images(split)]
        recon = decode(models["ae"], encode(models["ae"], x))
        rows += [(f"{name}\ntest image", strip(x)),
                 (_psnr_label(f"{ctx['dataset']} ae", recon, x), strip(recon))]
    own = ctx["test"].images[ctx["picks"]]
    recon = decode(models["ae"], encode(models["ae"], own))
    rows += [(f"{ctx['dataset']}\ntest image", strip(own)),
             (_psnr_label(f"{ctx['dataset']} ae", recon, own), strip(recon))]
    return rows_figure(rows, out / "other_dataset.png",
                       f"Known limit: the {ctx['dataset']} ae on images it was not trained for")


FIGURES = (fig_reconstructions, fig_denoising, fig_upscaling, fig_cvae_samples,
           fig_latent_map, fig_other_dataset)


def make_figures(dataset: str, models_dir: Path, data_dir: Path | None,
                 out_dir: Path | None = None, threads: int | None = None,
                 data: dict[str, Split] | None = None) -> list[Path]:
    """Draw every figure for the models of `dataset` that exist; return the PNG paths.

    `data` (splits) replaces the real files, for tests; the other-dataset figure is
    then skipped.
    """
    models_dir = Path(models_dir)
    manifest = load_manifest(models_dir)
    entries: list[ModelEntry] = [e for e in manifest.models if e.dataset == dataset]
    if not entries:
        raise KeyError(f"no models of {dataset!r} in {models_dir}")
    models = {e.name: OnnxModel(e, models_dir, threads) for e in entries}
    splits = data if data is not None else load_dataset(dataset, data_dir)
    other = {} if data is not None else {
        n: load_dataset(n, data_dir)["test"] for n in DATASETS
        if n != dataset and data_available(n, data_dir)}
    ctx = {"dataset": dataset, "train": splits["train"], "test": splits["test"],
           "picks": pick_images(splits["test"]), "other": other,
           "class_names": list(DATASETS[dataset].class_names)}
    out = Path(out_dir) if out_dir else figures_dir(models_dir, dataset)
    paths: list[Path] = []
    for draw in FIGURES:
        result = draw(models, ctx, out)
        paths += result if isinstance(result, list) else [result] if result else []
    return paths
