"""The model card, `exported_models/README.md`, generated from the manifest alone.

Every figure in the card is read from `manifest.json` (written there by
`training.evaluate` and `training.export`), so the card can never disagree with
what the service reports at `/models`. Per dataset it shows the test metrics
beside the baselines with the margins, the DESIGN section 7 bars and whether
they hold, how each model was trained (command, epochs, wall time), where the
data came from and under which licence, the known limits, and the figures.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.manifest import Manifest, ModelEntry, load_manifest
from training.evaluate import BARS, LITERATURE_NLL, lower_is_better

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
MODEL_ORDER = ("ae", "vae", "vae2d", "cvae", "denoiser", "upscaler_x2", "upscaler_x4")
FIGURES = (
    ("reconstructions.png", "Reconstructions: test images, `ae`, `vae` (posterior mean), PCA"),
    ("denoising.png", "Denoising at each test condition: noisy, linear MMSE, `denoiser`"),
    ("upscaling.png", "Super-resolution: low-res input, bicubic, linear MMSE, model, original"),
    ("cvae_samples.png", "`cvae` samples, one row per requested class"),
    ("vae2d_latent_map.png", "`vae2d`: posterior means of the test set, coloured by class"),
    ("vae2d_manifold.png", "`vae2d`: images decoded on a grid over the same map"),
    ("other_dataset.png", "Known limit: the `ae` fed images of the other dataset"),
)
METRIC_LABELS = {
    "mse": "MSE per pixel",
    "psnr_db": "PSNR (dB)",
    "ssim": "SSIM",
    "knn_accuracy": "5-NN accuracy",
    "nll_iwae_nats": "NLL, IWAE bound (nats)",
    "nll_elbo_nats": "NLL, ELBO (nats)",
    "class_accuracy": "class accuracy of samples",
    "frechet_distance": "Frechet distance (classifier features)",
}


def metric_label(metric: str) -> str:
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    kind, _, cond = metric.partition("_")
    cond = cond.replace("gaussian_", "Gaussian σ=").replace("salt_pepper_", "salt & pepper p=")
    return f"{'PSNR (dB)' if kind == 'psnr' else kind.upper()}, {cond}"


def fmt(metric: str, value: float | None) -> str:
    """A value as a person reads it: accuracies in %, dB to 2 decimals, MSE to 4."""
    if value is None:
        return "–"
    if "accuracy" in metric:
        return f"{100 * value:.1f} %"
    if metric.startswith("mse"):
        return f"{value:.4f}"
    if metric.startswith("ssim"):
        return f"{value:.3f}"
    return f"{value:.2f}"


def fmt_margin(metric: str, margin: float) -> str:
    """Signed improvement over a reference (positive = better), in the metric's unit."""
    if "accuracy" in metric:
        return f"{100 * margin:+.1f} pt"
    if metric.startswith("mse"):
        return f"{margin:+.4f}"
    if metric.startswith("ssim"):
        return f"{margin:+.3f}"
    return f"{margin:+.2f}"


def margin(metric: str, value: float, reference: float) -> float:
    return reference - value if lower_is_better(metric) else value - reference


def _baseline_name(name: str) -> str:
    return (name.replace("pca_", "PCA-").replace("_class_gaussian", " class Gaussians")
            .replace("linear_mmse", "linear MMSE").replace("median3x3", "median 3x3")
            .replace("_clipped", " (clipped)").replace("pixel_bernoulli", "pixel Bernoulli"))


def _bar(entry: ModelEntry, metric: str) -> tuple[str, str]:
    """(bar text, status text) for one metric."""
    if entry.dataset == "mnist":
        bar = BARS.get((entry.name, metric))
        if bar is None:
            return "", ""
        op, target = bar
        value = entry.metrics[metric]
        ok = value <= target if op == "<=" else value >= target
        miss = fmt_margin(metric, abs(margin(metric, value, target))).lstrip("+")
        return f"{op} {fmt(metric, target)}", "✅ met" if ok else f"❌ missed by {miss}"
    found = entry.baselines.get(metric)
    if not found:
        return "", ""
    best = (min if lower_is_better(metric) else max)(found.values())
    ok = margin(metric, entry.metrics[metric], best) > 0
    return "beat every baseline", "✅ beats all" if ok else "❌ does not"


def metrics_table(entries: list[ModelEntry]) -> list[str]:
    lines = [
        "| model | metric | model | baselines (same test images) | margin vs best baseline "
        "| bar | status |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in entries:
        if not entry.metrics:
            lines.append(f"| `{entry.name}` | *not evaluated yet* | | | | | |")
            continue
        for metric, value in entry.metrics.items():
            found = entry.baselines.get(metric, {})
            base = "; ".join(f"{_baseline_name(b)} {fmt(metric, v)}" for b, v in found.items())
            if metric == "frechet_distance" and "frechet_floor_real_vs_real" in entry.evaluation:
                floor = entry.evaluation["frechet_floor_real_vs_real"]
                base += f"; *floor, real vs real: {fmt(metric, floor)}*"
            best = ""
            if found:
                pick = (min if lower_is_better(metric) else max)(found, key=found.get)
                best = f"{fmt_margin(metric, margin(metric, value, found[pick]))} " \
                       f"vs {_baseline_name(pick)}"
            bar, status = _bar(entry, metric)
            lines.append(f"| `{entry.name}` | {metric_label(metric)} | **{fmt(metric, value)}** "
                         f"| {base} | {best} | {bar} | {status} |")
    return lines


def training_table(entries: list[ModelEntry]) -> list[str]:
    lines = [
        "| model | command | epochs | batch | lr | train / val images | best val loss "
        "| wall time | parity (max abs diff) | files |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        t = e.training
        command = f"`python -m training train --dataset {e.dataset} --model {e.name}`"
        size = sum(f.size_bytes for f in e.files.values()) / 1e6
        flags = " (synthetic data!)" if t.config.get("synthetic") else ""
        if t.config.get("max_train"):
            flags += f" (first {t.config['max_train']} images only)"
        lines.append(
            f"| `{e.name}` | {command}{flags} | {t.epochs} | {t.batch_size} | {t.learning_rate:g} "
            f"| {t.train_examples:,} / {t.validation_examples:,} | {t.best_validation_loss:.5f} "
            f"| {t.wall_time_s / 60:.1f} min | {e.parity_max_abs_diff:.1e} | {size:.2f} MB |")
    total = sum(e.training.wall_time_s for e in entries) / 60
    lines.append(f"| **all** | | | | | | | **{total:.1f} min** | | |")
    threads = {e.training.config.get("threads") for e in entries}
    if threads == {1}:
        two = two_job_makespan([e.training.wall_time_s for e in entries]) / 60
        lines += ["", f"Each run used one thread. `train-all --jobs 2` trains two at a time, "
                  f"longest first, on the 2 cores: from these run times, {two:.1f} min for the "
                  f"whole set (a projection from the per-model times, not a timed run)."]
    return lines


def two_job_makespan(seconds: list[float]) -> float:
    """Wall time of running these jobs on two workers, longest first (what `--jobs 2` does)."""
    workers = [0.0, 0.0]
    for t in sorted(seconds, reverse=True):
        workers[workers.index(min(workers))] += t
    return max(workers)


def _classifier(entries: list[ModelEntry]) -> dict | None:
    for e in entries:
        if "classifier" in e.evaluation:
            return e.evaluation["classifier"]
    return None


def limits(dataset: str, entries: list[ModelEntry]) -> list[str]:
    by_name = {e.name: e for e in entries}
    lines = []
    ae = by_name.get("ae")
    if ae and ae.evaluation.get("on_other_dataset"):
        for other, found in ae.evaluation["on_other_dataset"].items():
            own = ae.metrics.get("mse")
            lines.append(
                f"- **Data-specific.** The {dataset} `ae` reconstructs {other} test images with "
                f"MSE {found['mse']:.4f} ({found['psnr_db']:.1f} dB), against {own:.4f} on its "
                f"own test set; PCA-16 fitted on {dataset} gets {found['pca_16_mse']:.4f} there. "
                f"It maps what it sees onto the things it knows (see `other_dataset.png`): use "
                f"the model of the matching dataset.")
    den = by_name.get("denoiser")
    if den and den.evaluation.get("on_other_dataset"):
        for other, found in den.evaluation["on_other_dataset"].items():
            own = den.metrics.get("psnr_gaussian_0.5")
            lines.append(
                f"- The {dataset} `denoiser` on {other} images at σ=0.5: "
                f"{found['psnr_gaussian_0.5']:.2f} dB, against {own:.2f} dB on {dataset}.")
    lines += [
        "- Encoders and decoders work on 28x28 greyscale images with pixels in [0,1] (white "
        "object on black, as in the datasets); the service resizes other inputs, which only "
        "helps when the content looks like the training data.",
        "- `denoiser` was trained on Gaussian noise σ ≤ 0.6 and salt-and-pepper p ≤ 0.3, "
        "clipped; other corruptions (blur, JPEG, structured noise) are untested. `denoiser` "
        "and the upscalers accept any size, but learned the statistics of centred 28x28 "
        "objects.",
        "- The VAEs model *binarized* images (likelihoods are Bernoulli, in nats); their "
        "decoded grey levels are pixel probabilities, hence softer than the data.",
        "- The linear MMSE denoising baseline is told the noise level of each condition; the "
        "model is blind to it.",
    ]
    clf = _classifier(entries)
    if clf:
        lines.append(
            f"- `cvae` class accuracy and Frechet distance are judged by a small CNN trained "
            f"in the project ({100 * clf['test_accuracy']:.2f} % test accuracy on "
            f"{dataset}); its own errors cap the measurable class accuracy.")
    return lines


def evaluation_notes(entries: list[ModelEntry]) -> list[str]:
    notes = []
    sample = next((e.evaluation for e in entries if e.evaluation), None)
    if not sample:
        return ["Not evaluated yet: run `python -m training evaluate`."]
    notes.append(
        f"- Test split only: {sample['test_images']:,} images, never seen in training; "
        f"baselines fit on the {sample['train_images_for_baselines']:,} training images and "
        f"scored by the same code on the same test images. Run on the exported ONNX files "
        f"with {sample['runtime']}, {sample.get('date', '')}.")
    notes.append("- PSNR = 10 log10(1 / MSE) with the MSE averaged over the whole test set; "
                 "SSIM: scikit-image defaults, data_range 1, averaged over images; 5-NN: "
                 "Euclidean, training latents -> test latents.")
    for e in entries:
        ev = e.evaluation
        if "iwae_k" in ev:
            se = ev.get("nll_iwae_std_error")
            notes.append(
                f"- `{e.name}` NLL: IWAE bound with k={ev['iwae_k']} samples per test image "
                f"(test set binarized once, fixed seed){f', ± {se:.2f} nats (s.e.)' if se else ''}"
                f"; took {ev['iwae_seconds'] / 60:.1f} min.")
        if e.name == "vae" and e.dataset == "mnist" and e.metrics:
            notes.append(f"- Literature, MNIST (dynamically binarized): VAE "
                         f"{LITERATURE_NLL['vae']} nats, IWAE {LITERATURE_NLL['iwae']} nats "
                         f"(Burda et al. 2016, k=5000).")
        if "frechet_floor_real_vs_real" in ev:
            notes.append(
                f"- `{e.name}`: {ev['samples_per_class']} samples per class, z ~ N(0, I); "
                f"Frechet distance against the test images in the classifier's feature space; "
                f"the floor is {ev['frechet_floor']}.")
        if "float32_metrics" in ev:
            int8 = next(g.int8 for g in e.files.values() if g.int8)
            floats = ", ".join(
                f"{metric_label(m)} {fmt(m, v)} "
                f"({fmt_margin(m, margin(m, e.metrics[m], v))} in int8)"
                for m, v in ev["float32_metrics"].items() if m in e.metrics)
            notes.append(
                f"- `{e.name}` is served in int8 ({int8.method}; ranges calibrated on "
                f"{int8.calibration_images:,} training inputs). The float32 graph it was made "
                f"from, `{int8.source_path}`, scores: {floats}.")
        if "conditions" in ev:
            notes.append(
                f"- `{e.name}`: noisy test images made once with seed {ev['test_noise_seed']}; "
                f"linear MMSE fit on noisy training pairs of the same condition. `linear MMSE` "
                f"is DESIGN's unclipped estimator; `(clipped)` clips to [0,1], the stricter "
                f"baseline.")
    return notes


def render(manifest: Manifest, root: Path) -> str:
    out = [
        "# Model card: convolutional autoencoders for MNIST and Fashion-MNIST",
        "",
        "<!-- Generated by `python -m training card` from manifest.json; do not edit. -->",
        "",
        "Every number below comes from `manifest.json`, written by the evaluation "
        "(`python -m training evaluate --dataset <name>`), which runs the exported ONNX files "
        "through onnxruntime on the untouched test split and scores the baselines with the "
        "same code on the same images. Bars are those of DESIGN section 7 (MNIST); on "
        "Fashion-MNIST every model must beat every baseline.",
        "",
        "Reproduce a dataset's whole set (train, export, evaluate, draw, document):",
        "",
        "```",
    ]
    datasets = sorted({e.dataset for e in manifest.models})
    for ds in datasets:
        out += [f"python -m training train-all --dataset {ds} --jobs 2",
                f"python -m training evaluate --dataset {ds}",
                f"python -m training figures --dataset {ds}"]
    out += ["python -m training card", "```", ""]
    for ds in datasets:
        entries = sorted((e for e in manifest.models if e.dataset == ds),
                         key=lambda e: MODEL_ORDER.index(e.name) if e.name in MODEL_ORDER else 99)
        info = manifest.datasets.get(ds)
        out += [f"## {ds}", ""]
        if info:
            out += [f"Data: {info.source}. Licence: {info.licence}. 60,000 training and 10,000 "
                    f"test images, 28x28 greyscale, classes: {', '.join(info.class_names)}. "
                    f"Files verified by the sha256 of their decompressed content:", ""]
            out += [f"- `{name}`: `{sha}`" for name, sha in sorted(info.sha256.items())]
            out.append("")
        out += ["### Test metrics beside the baselines", ""]
        out += metrics_table(entries)
        clf = _classifier(entries)
        if clf:
            out += ["", f"Judge of generated images: a small CNN trained in the project "
                        f"({clf['config']['epochs']} epochs, seed {clf['config']['seed']}), "
                        f"test accuracy **{100 * clf['test_accuracy']:.2f} %**."]
        out += ["", "How the numbers were computed:", ""] + evaluation_notes(entries)
        out += ["", "### Training", ""] + training_table(entries) + [""]
        figures = [(f, c) for f, c in FIGURES if (root / ds / "figures" / f).is_file()]
        if figures:
            out += ["### Figures", ""]
            for name, caption in figures:
                out += [f"**{caption}**", "", f"![{caption}]({ds}/figures/{name})", ""]
        out += ["### Known limits", ""] + limits(ds, entries) + [""]
    return "\n".join(out).rstrip() + "\n"


def write_card(models_dir: Path) -> Path:
    """Write `<models_dir>/README.md` from `<models_dir>/manifest.json`; return its path."""
    root = Path(models_dir)
    path = root / CARD_NAME
    path.write_text(render(load_manifest(root), root))
    log.info("wrote %s", path)
    return path
