"""Evaluate the exported ONNX models on the test split, beside baselines, into the manifest.

Everything here runs the shipped files through onnxruntime (never torch), so the
figures describe exactly what the service serves. For each model of a dataset
it computes the metrics of DESIGN section 6 on the untouched test split, the
baselines of `training.baselines` with the same code on the same images, and
writes `metrics`, `baselines` (metric -> baseline -> value) and `evaluation`
(how: images, seeds, k, timings, classifier accuracy, Frechet floor, bars) into
the manifest entries.

Metric keys, by task:
    autoencoder  mse, psnr_db, ssim, knn_accuracy
    vae          nll_iwae_nats (k samples, test set binarized once), nll_elbo_nats,
                 knn_accuracy (of means), mse / psnr_db (decoded means vs grey images)
    cvae         class_accuracy, frechet_distance (classifier features), nll_* as vae
    denoise      psnr_<condition>, ssim_<condition> for gaussian_0.3, gaussian_0.5,
                 salt_pepper_0.2
    upscale      psnr_db, ssim
Every random draw has a fixed seed, and the IWAE samples of test image i come
from their own generator seeded by (seed, i), so a re-run (or a run on the first
N images only) reproduces the same per-image figures.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.special import logsumexp
from tqdm import tqdm

from service.manifest import Manifest, ModelEntry, load_manifest, save_manifest, verify_files
from training import baselines, metrics
from training.data import DATASETS, Split, data_available, load_dataset
from training.transforms import binarize, downsample

log = logging.getLogger(__name__)

SEED = 0  # binarization of the test set, IWAE samples, cvae samples, Frechet reference set
KNN_K = 5
SAMPLES_PER_CLASS = 1000  # cvae: generated images per requested class (fewer on a --max-test run)
DECODE_BATCH = 2000  # rows per decoder call in the IWAE loop
LITERATURE_NLL = {"vae": 86.8, "iwae": 84.8}  # nats, MNIST, Burda et al. 2016 (k=5000)

# DESIGN section 7, MNIST: (model, metric) -> (comparison, bar).
BARS: dict[tuple[str, str], tuple[str, float]] = {
    ("ae", "mse"): ("<=", 0.0070),
    ("ae", "knn_accuracy"): (">=", 0.970),
    ("vae2d", "knn_accuracy"): (">=", 0.70),
    ("denoiser", "psnr_gaussian_0.5"): (">=", 20.5),
    ("denoiser", "psnr_gaussian_0.3"): (">=", 23.0),
    ("denoiser", "psnr_salt_pepper_0.2"): (">=", 22.0),
    ("upscaler_x2", "psnr_db"): (">=", 27.0),
    ("upscaler_x4", "psnr_db"): (">=", 18.5),
    ("vae", "nll_iwae_nats"): ("<=", 90.0),
    ("cvae", "class_accuracy"): (">=", 0.95),
}
LOWER_IS_BETTER = ("mse", "nll", "frechet")


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


# ---------------------------------------------------------------- onnxruntime


class OnnxModel:
    """The graphs of one manifest entry as onnxruntime sessions, run in batches."""

    def __init__(self, entry: ModelEntry, root: Path, threads: int | None = None):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.entry = entry
        self.sessions = {
            role: ort.InferenceSession(str(Path(root) / g.path), opts,
                                       providers=["CPUExecutionProvider"])
            for role, g in entry.files.items()
        }

    def run(self, role: str, *inputs: np.ndarray, batch: int = 1000) -> dict[str, np.ndarray]:
        """Feed `inputs` (in the graph's input order) in batches; outputs by name."""
        session = self.sessions[role]
        names = [i.name for i in session.get_inputs()]
        outs = [o.name for o in session.get_outputs()]
        dtypes = [np.int64 if "int64" in i.type else np.float32 for i in session.get_inputs()]
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(inputs[0]), batch):
            feeds = {n: np.ascontiguousarray(x[start : start + batch], dtype=t)
                     for n, x, t in zip(names, inputs, dtypes, strict=True)}
            chunks.append(session.run(outs, feeds))
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(outs)}


def encode(model: OnnxModel, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Latents (ae) or posterior means (vae, cvae) of `images`."""
    args = (images,) if labels is None else (images, labels)
    out = model.run("encoder", *args)
    return out["mean"] if "mean" in out else next(iter(out.values()))


def decode(model: OnnxModel, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Images (pixel values / probabilities) decoded from latents."""
    args = (z,) if labels is None else (z, labels)
    out = model.run("decoder", *args)
    return out["image"] if "image" in out else next(iter(out.values()))


# ---------------------------------------------------------------- the evaluation context


class Context:
    """The data and the shared, lazily computed baselines of one evaluation run."""

    def __init__(self, dataset: str, train: Split, test: Split, other: dict[str, Split],
                 runs_dir: Path, classifier=None, iwae_images: int | None = None):
        self.dataset, self.train, self.test, self.other = dataset, train, test, other
        self.runs_dir = runs_dir
        self.iwae_images = iwae_images  # the IWAE bound on the first N test images only
        self._pca: dict[int, baselines.PCABaseline] = {}
        self._classifier = classifier

    def pca(self, d: int) -> baselines.PCABaseline:
        if d not in self._pca:
            self._pca[d] = baselines.PCABaseline.fit(self.train.images, d)
        return self._pca[d]

    def classifier(self):
        if self._classifier is None:
            from training.classifier import load_or_train  # torch only when needed

            splits = {"train": self.train, "test": self.test}
            self._classifier = load_or_train(self.dataset, splits, self.runs_dir)
        return self._classifier


def _images_scores(pred: np.ndarray, target: np.ndarray, with_ssim: bool = True) -> dict:
    scores = {"mse": metrics.mse(pred, target)}
    scores["psnr_db"] = metrics.psnr_from_mse(scores["mse"])
    if with_ssim:
        scores["ssim"] = metrics.ssim(pred, target)
    return scores


def _pca_scores(ctx: Context, d: int) -> dict[str, float]:
    pca, test = ctx.pca(d), ctx.test
    scores = _images_scores(pca.reconstruct(test.images), test.images)
    scores["knn_accuracy"] = metrics.knn_accuracy(
        pca.encode(ctx.train.images), ctx.train.labels, pca.encode(test.images), test.labels, KNN_K)
    return scores


# ---------------------------------------------------------------- per task


def eval_autoencoder(model: OnnxModel, ctx: Context) -> tuple[dict, dict, dict]:
    d, test = model.entry.latent_dim, ctx.test
    z_test = encode(model, test.images)
    found = _images_scores(decode(model, z_test), test.images)
    found["knn_accuracy"] = metrics.knn_accuracy(
        encode(model, ctx.train.images), ctx.train.labels, z_test, test.labels, KNN_K)
    pca = _pca_scores(ctx, d)
    base = {k: {f"pca_{d}": pca[k]} for k in found}
    info: dict = {}
    for name, split in ctx.other.items():  # what a model of this data does on the other data
        recon = decode(model, encode(model, split.images))
        info.setdefault("on_other_dataset", {})[name] = {
            **_images_scores(recon, split.images, with_ssim=False),
            f"pca_{d}_mse": metrics.mse(ctx.pca(d).reconstruct(split.images), split.images),
            "test_images": len(split),
        }
    return found, base, info


def iwae_nll(model: OnnxModel, images: np.ndarray, labels: np.ndarray | None, k: int,
             seed: int = SEED, desc: str = "iwae") -> tuple[np.ndarray, np.ndarray]:
    """Per-image IWAE bound and ELBO estimate of log p(x) (nats) for binary `images`.

    The encoder runs once per image, the decoder on k latent samples of each; image
    i draws its samples from a generator seeded by (seed, i).
    """
    out = model.run("encoder", *((images,) if labels is None else (images, labels)))
    mean, logvar = out["mean"].astype(np.float64), out["logvar"].astype(np.float64)
    d = mean.shape[1]
    per_call = max(1, DECODE_BATCH // k)
    flat = images.reshape(len(images), -1)
    bound, elbo = np.empty(len(images)), np.empty(len(images))
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), per_call):
            idx = np.arange(start, min(start + per_call, len(images)))
            eps = np.stack([np.random.default_rng([seed, int(i)]).standard_normal((k, d))
                            for i in idx], axis=1)  # [k, B, d]
            z = mean[idx] + np.exp(0.5 * logvar[idx]) * eps
            feeds = [z.reshape(-1, d).astype(np.float32)]
            if labels is not None:
                feeds.append(np.broadcast_to(labels[idx], (k, len(idx))).reshape(-1))
            logits = model.run("decoder", *feeds, batch=len(feeds[0]))["logits"]
            log_px_z = metrics.bernoulli_log_likelihood(
                flat[idx][None], logits.reshape(k, len(idx), -1), event_ndim=1)
            log_qz = -0.5 * np.sum(metrics.LOG_2PI + logvar[idx] + eps * eps, axis=-1)
            log_w = log_px_z + metrics.log_standard_normal(z) - log_qz  # [k, B]
            bound[idx] = logsumexp(log_w, axis=0) - math.log(k)
            elbo[idx] = log_w.mean(0)
            bar.update(len(idx))
    return bound, elbo


def pixel_bernoulli_nll(train: np.ndarray, binary_test: np.ndarray) -> float:
    """NLL (nats) under independent per-pixel Bernoullis fit on the training images."""
    p = np.clip(train.reshape(len(train), -1).astype(np.float64).mean(0), 1e-4, 1 - 1e-4)
    x = binary_test.reshape(len(binary_test), -1).astype(np.float64)
    return float(-np.mean(x @ np.log(p) + (1 - x) @ np.log1p(-p)))


def _nll(model: OnnxModel, ctx: Context, k: int, conditional: bool) -> tuple[dict, dict, dict]:
    test = ctx.test
    # Binarize the whole split once, then (maybe) take the first N: the same N images
    # and samples as a full run, since each image seeds its own samples.
    binary = binarize(test.images, np.random.default_rng(SEED))[: ctx.iwae_images]
    labels = test.labels[: len(binary)]
    start = time.perf_counter()
    bound, elbo = iwae_nll(model, binary, labels if conditional else None, k,
                           desc=f"{ctx.dataset}/{model.entry.name} IWAE k={k}")
    seconds = time.perf_counter() - start
    log.info("%s/%s: IWAE k=%d on %d images in %.0f s", ctx.dataset, model.entry.name, k,
             len(binary), seconds)
    found = {"nll_iwae_nats": float(-bound.mean()), "nll_elbo_nats": float(-elbo.mean())}
    base = {"nll_iwae_nats": {"pixel_bernoulli": pixel_bernoulli_nll(ctx.train.images, binary)}}
    info = {
        "iwae_k": k,
        "iwae_test_images": len(binary),
        "iwae_seconds": round(seconds, 1),
        "nll_iwae_std_error": float(bound.std(ddof=1) / math.sqrt(len(bound))) if len(bound) > 1
        else None,
        "binarization": f"pixel p -> Bernoulli(p), once, numpy default_rng({SEED})",
        "nll_elbo": "mean of the k single-sample ELBO estimates",
    }
    return found, base, info


def eval_vae(model: OnnxModel, ctx: Context, iwae_k: int) -> tuple[dict, dict, dict]:
    d, test = model.entry.latent_dim, ctx.test
    means = encode(model, test.images)
    found = _images_scores(decode(model, means), test.images)
    found["knn_accuracy"] = metrics.knn_accuracy(
        encode(model, ctx.train.images), ctx.train.labels, means, test.labels, KNN_K)
    pca = _pca_scores(ctx, d)
    base = {key: {f"pca_{d}": pca[key]} for key in found}
    info = {"inputs": "grey test images for means, k-NN and reconstructions"}
    if iwae_k > 0:
        nll, nll_base, nll_info = _nll(model, ctx, iwae_k, conditional=False)
        found |= nll
        base |= nll_base
        info |= nll_info | {"literature_nll_mnist_nats": LITERATURE_NLL}
    return found, base, info


def _class_samples(model: OnnxModel, n_per_class: int, seed: int = SEED) -> tuple:
    d = model.entry.latent_dim
    labels = np.repeat(np.arange(model.entry.num_classes or 10), n_per_class)
    z = np.random.default_rng(seed).standard_normal((len(labels), d)).astype(np.float32)
    return decode(model, z, labels), labels


def _pca_class_gaussian_samples(ctx: Context, d: int, n_per_class: int, seed: int = SEED):
    """The generative baseline: per class, a Gaussian fit to PCA-d features, decoded by PCA."""
    pca, rng = ctx.pca(d), np.random.default_rng([seed, 1])
    feats = pca.encode(ctx.train.images).astype(np.float64)
    images, labels = [], []
    for c in range(10):
        own = feats[ctx.train.labels == c]
        z = rng.multivariate_normal(own.mean(0), np.cov(own, rowvar=False), n_per_class)
        images.append(np.clip(pca.decode(z, ctx.train.images.shape[1:]), 0, 1))
        labels.append(np.full(n_per_class, c))
    return np.concatenate(images), np.concatenate(labels)


def eval_cvae(model: OnnxModel, ctx: Context, iwae_k: int) -> tuple[dict, dict, dict]:
    clf, test = ctx.classifier(), ctx.test
    n = min(SAMPLES_PER_CLASS, -(-len(test) // 10))  # as many samples as test images
    samples, labels = _class_samples(model, n)
    pred = clf.predict(samples)
    test_feats = clf.features(test.images)
    found = {
        "class_accuracy": float(np.mean(pred == labels)),
        "frechet_distance": metrics.frechet_distance(clf.features(samples), test_feats),
    }
    d = model.entry.latent_dim
    base_images, base_labels = _pca_class_gaussian_samples(ctx, d, n)
    name = f"pca_{d}_class_gaussian"
    base = {
        "class_accuracy": {name: float(np.mean(clf.predict(base_images) == base_labels))},
        "frechet_distance": {name: metrics.frechet_distance(clf.features(base_images), test_feats)},
    }
    reference = np.random.default_rng([SEED, 2]).choice(len(ctx.train), len(test), replace=False)
    floor = metrics.frechet_distance(clf.features(ctx.train.images[reference]), test_feats)
    info = {
        "samples_per_class": n,
        "sampling": f"z ~ N(0, I) from numpy default_rng({SEED}); images = decoder 'image' "
                    "output (pixel probabilities)",
        "per_class_accuracy": [float(np.mean(pred[labels == c] == c)) for c in range(10)],
        "classifier_test_accuracy": clf.test_accuracy,
        "classifier": clf.info,
        "frechet_features": f"classifier penultimate layer ({test_feats.shape[1]}-d)",
        "frechet_floor_real_vs_real": floor,
        "frechet_floor": f"{len(test)} random training images vs the test images",
    }
    if iwae_k > 0:
        nll, nll_base, nll_info = _nll(model, ctx, iwae_k, conditional=True)
        found |= nll
        base |= nll_base
        info |= nll_info
    return found, base, info


def eval_denoiser(model: OnnxModel, ctx: Context) -> tuple[dict, dict, dict]:
    clean = ctx.test.images
    found, base = {}, {}
    for cond in baselines.CONDITIONS:
        noisy = baselines.corrupt(clean, cond)
        scores = _images_scores(model.run("model", noisy, batch=500)["output"], clean)
        found[f"psnr_{cond.name}"], found[f"ssim_{cond.name}"] = scores["psnr_db"], scores["ssim"]
        for name, pred in baselines.denoise_baselines(ctx.train.images, noisy, cond).items():
            b = _images_scores(pred, clean)
            base.setdefault(f"psnr_{cond.name}", {})[name] = b["psnr_db"]
            base.setdefault(f"ssim_{cond.name}", {})[name] = b["ssim"]
    info: dict = {
        "conditions": {c.name: {"kind": c.kind, "level": c.level} for c in baselines.CONDITIONS},
        "test_noise_seed": baselines.TEST_NOISE_SEED,
        "baseline_train_noise_seed": baselines.TRAIN_NOISE_SEED,
        "linear_mmse": "affine MMSE over whole images, fit on clean/noisy training pairs of "
                       "the same condition (knows the noise level; the model is blind)",
    }
    cond = baselines.Condition("gaussian", 0.5)
    for name, split in ctx.other.items():
        out = model.run("model", baselines.corrupt(split.images, cond), batch=500)["output"]
        info.setdefault("on_other_dataset", {})[name] = {
            f"psnr_{cond.name}": metrics.psnr(out, split.images), "test_images": len(split)}
    return found, base, info


def eval_upscaler(model: OnnxModel, ctx: Context) -> tuple[dict, dict, dict]:
    factor, clean = model.entry.scale, ctx.test.images
    low = downsample(clean, factor)
    found = _images_scores(model.run("model", low, batch=500)["output"], clean)
    found.pop("mse")
    base: dict = {}
    for name, pred in baselines.upscale_baselines(ctx.train.images, low, factor).items():
        for key, value in _images_scores(pred, clean).items():
            if key in found:
                base.setdefault(key, {})[name] = value
    info = {"low_resolution": f"{factor}x{factor} average pooling of the test images"}
    return found, base, info


# ---------------------------------------------------------------- bars and the entry point


def bar_status(entry: ModelEntry) -> dict:
    """DESIGN section 7's bars (MNIST only); margin > 0 means the bar is cleared by that much."""
    status = {}
    if entry.dataset == "mnist":
        for (name, metric), (op, bar) in BARS.items():
            if name == entry.name and metric in entry.metrics:
                value = entry.metrics[metric]
                ok = value <= bar if op == "<=" else value >= bar
                status[metric] = {"bar": bar, "op": op, "passed": bool(ok),
                                  "margin": (bar - value) if op == "<=" else (value - bar)}
    return status


def beats_baselines(entry: ModelEntry) -> dict[str, dict]:
    """For each metric with baselines: the best baseline and whether the model beats it
    (margin > 0: better than the best baseline by that much, in the metric's unit)."""
    result = {}
    for metric, found in entry.baselines.items():
        if metric not in entry.metrics or not found:
            continue
        value, low = entry.metrics[metric], lower_is_better(metric)
        best_name = (min if low else max)(found, key=found.get)
        best = found[best_name]
        result[metric] = {"best_baseline": best_name, "best_value": best,
                          "margin": (best - value) if low else (value - best),
                          "beats": bool(value < best if low else value > best)}
    return result


def _splits(dataset: str, data_dir: Path | None, data: dict | None, max_test: int | None):
    splits = data if data is not None else load_dataset(dataset, data_dir)
    train, test = splits["train"], splits["test"]
    if max_test:
        test = Split(test.images[:max_test], test.labels[:max_test])
    other = {}
    if data is None:
        for name in DATASETS:
            if name != dataset and data_available(name, data_dir):
                t = load_dataset(name, data_dir)["test"]
                other[name] = Split(t.images[:max_test], t.labels[:max_test]) if max_test else t
    return train, test, other


def evaluate_models(
    dataset: str,
    models_dir: Path,
    data_dir: Path | None,
    names: list[str] | None = None,
    max_test: int | None = None,
    iwae_k: int = 1000,
    *,
    threads: int | None = None,
    runs_dir: Path = Path("runs"),
    data: dict[str, Split] | None = None,
    classifier=None,
    cvae_nll: bool = False,
    iwae_images: int | None = None,
) -> Manifest:
    """Evaluate the exported models of `dataset` in `models_dir`; write the results into its
    manifest and return it.

    `names` limits the models; `max_test` uses the first N test images (the whole
    test split otherwise); `iwae_k` = 0 skips the likelihoods (and drops any recorded
    before: each model's figures are replaced as a whole). The IWAE bound costs about
    k decoder runs per test image (~30 min for k=1000 on 10,000 images on one core),
    so the `cvae` gets it only with `cvae_nll`, and `iwae_images` limits it to the first
    N test images (recorded as `iwae_test_images`). `data` (splits) and `classifier`
    replace the real data and the cached classifier (tests); `threads` sets
    onnxruntime's intra-op threads (its default: all cores).
    """
    models_dir = Path(models_dir)
    manifest = load_manifest(models_dir)
    entries = [e for e in manifest.models
               if e.dataset == dataset and (names is None or e.name in names)]
    if not entries:
        raise KeyError(f"no models of {dataset!r} named {names or 'any'} in {models_dir}")
    verify_files(Manifest(created=manifest.created, models=entries), models_dir)
    train, test, other = _splits(dataset, data_dir, data, max_test)
    ctx = Context(dataset, train, test, other, Path(runs_dir), classifier, iwae_images)
    evaluated = []
    for entry in entries:
        start = time.perf_counter()
        found, base, info = _evaluate(OnnxModel(entry, models_dir, threads), ctx, iwae_k,
                                      cvae_nll)
        if any(graph.int8 for graph in entry.files.values()):
            # What int8 costs: the same figures from the float32 graphs it was made from.
            floats = entry.model_copy(update={"files": {
                role: graph.model_copy(update={"path": graph.float_path, "int8": None})
                for role, graph in entry.files.items()}})
            info["float32_metrics"] = {k: float(v) for k, v in _evaluate(
                OnnxModel(floats, models_dir, threads), ctx, iwae_k, cvae_nll)[0].items()}
        entry.metrics = {k: float(v) for k, v in found.items()}
        entry.baselines = {m: {b: float(v) for b, v in bs.items()} for m, bs in base.items()}
        entry.evaluation = {
            "split": "test",
            "test_images": len(test),
            "train_images_for_baselines": len(train),
            "data": "synthetic" if data is not None else f"{dataset} official IDX files",
            "runtime": f"onnxruntime {ort.__version__} (CPU)",
            "seed": SEED,
            "knn_k": KNN_K,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - start, 1),
            **info,
        }
        entry.evaluation["bars"] = bar_status(entry)
        entry.evaluation["vs_baselines"] = beats_baselines(entry)
        log.info("%s/%s evaluated in %.0f s: %s", dataset, entry.name,
                 entry.evaluation["wall_time_s"],
                 ", ".join(f"{k}={v:.4g}" for k, v in entry.metrics.items()))
        evaluated.append(entry)
    return _record(models_dir, evaluated)


def _evaluate(model: OnnxModel, ctx: Context, iwae_k: int, cvae_nll: bool
              ) -> tuple[dict, dict, dict]:
    """The task's figures, baselines and notes for one model."""
    task = model.entry.task
    if task == "autoencoder":
        return eval_autoencoder(model, ctx)
    if task == "vae":
        return eval_vae(model, ctx, iwae_k)
    if task == "cvae":
        return eval_cvae(model, ctx, iwae_k if cvae_nll else 0)
    if task == "denoise":
        return eval_denoiser(model, ctx)
    return eval_upscaler(model, ctx)


def _record(models_dir: Path, evaluated: list[ModelEntry]) -> Manifest:
    """Write the results into the manifest under the exporter's lock, only into entries whose
    files are still the ones evaluated (a model re-exported meanwhile keeps its new entry)."""
    with open(models_dir / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(models_dir)
        for entry in evaluated:
            try:
                current = manifest.get(entry.dataset, entry.name)
            except KeyError:
                log.warning("%s/%s left the manifest during evaluation", *entry.key)
                continue
            if current.files != entry.files:
                log.warning("%s/%s was re-exported during evaluation; results not recorded",
                            *entry.key)
                continue
            current.metrics, current.baselines = entry.metrics, entry.baselines
            current.evaluation = entry.evaluation
        save_manifest(manifest, models_dir)
    return manifest

