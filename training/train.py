"""The training loop: one function, `train(config)`, for every model in `models.MODELS`.

A validation split is carved from the training split with the run's seed (the
test split is never seen here); the best validation checkpoint is kept, training
stops early when validation stops improving, and `--resume` continues from the
last checkpoint (weights, optimizer, schedule, history, RNG).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training import transforms
from training.data import Split, load_dataset, synthetic_dataset
from training.models import Batch, build_model

log = logging.getLogger(__name__)

# Per-model recipe: the defaults the shipped models were trained with.
# Ordered as `train-all` runs them (the longest last).
RECIPES: dict[str, dict] = {
    "ae": {"epochs": 12, "lr": 2e-3},
    "upscaler_x2": {"epochs": 6, "lr": 2e-3},
    "upscaler_x4": {"epochs": 10, "lr": 2e-3},
    # U-Net: 10 epochs left MNIST sigma 0.5 at 20.29 dB (bar 20.5), validation still
    # improving at 20; 28 buys margin for the int8 export
    "denoiser": {"epochs": 28, "lr": 2e-3},
    # beta > 1: with beta = 1 the cvae's z kept so much detail that prior samples at
    # temperature 1 fell between the posteriors (69 % class accuracy on MNIST); a
    # stronger KL leaves the class to the label and makes prior samples typical.
    "cvae": {"epochs": 12, "lr": 1e-3, "kl_warmup_epochs": 2, "beta": 2.5},
    "vae2d": {"epochs": 12, "lr": 1e-3, "kl_warmup_epochs": 2},
    "vae": {"epochs": 30, "lr": 1e-3, "kl_warmup_epochs": 3},
}

# Minutes each recipe took on one core (MNIST, the timed `train-all --jobs 2` run in
# docs/PERFORMANCE.md): `train-all --jobs N` starts the longest first.
RECIPE_COST = {"denoiser": 28, "vae": 14, "cvae": 6, "vae2d": 6, "ae": 6, "upscaler_x4": 4,
               "upscaler_x2": 4}


@dataclass
class TrainConfig:
    """Everything that defines a run; serialized into checkpoints and the manifest."""

    model: str
    dataset: str = "mnist"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    patience: int = 4  # epochs without validation improvement before stopping
    kl_warmup_epochs: int = 0  # VAEs: KL weight ramps 0 -> 1 over these epochs
    beta: float = 1.0  # VAEs: weight of the KL term after warm-up
    threads: int = 2
    max_train: int | None = None  # use only the first N training images (smoke runs)
    synthetic: bool = False  # tiny fake data instead of the real files (tests)
    model_kwargs: dict = field(default_factory=dict)
    data_dir: str | None = None
    allow_download: bool = False
    runs_dir: str = "runs"

    @classmethod
    def for_model(cls, model: str, **overrides) -> TrainConfig:
        return cls(model=model, **{**RECIPES.get(model, {}), **overrides})

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.dataset / self.model


@dataclass
class TrainResult:
    model: torch.nn.Module
    config: TrainConfig
    history: list[dict]
    best_val_loss: float
    epochs_run: int
    wall_time_s: float
    train_examples: int
    val_examples: int
    sample_images: np.ndarray  # a few validation images, for the export parity check


def make_batch(model_name: str, images: np.ndarray, labels: np.ndarray,
               rng: np.random.Generator) -> Batch:
    """Turn clean images into what `model_name` trains on (its corruption and its target)."""
    target = images
    if model_name in ("vae", "vae2d", "cvae"):
        target = inputs = transforms.binarize(images, rng)
    elif model_name == "denoiser":
        inputs = transforms.blind_noise(images, rng)
    elif model_name.startswith("upscaler_x"):
        inputs = transforms.downsample(images, int(model_name.removeprefix("upscaler_x")))
    else:
        inputs = images
    return Batch(torch.from_numpy(inputs), torch.from_numpy(target), torch.from_numpy(labels))


def model_inputs(config: TrainConfig, counts: dict[str, int], seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """`counts[part]` images of each part ("fit", "val") of the training split, loaded once,
    with the corruption `config.model` trains on: int8 calibration and check data."""
    parts = dict(zip(("fit", "val"),
                     split_train_val(_load(config), config.val_fraction, config.seed),
                     strict=True))
    out = {}
    for part, count in counts.items():
        images = parts[part].images
        images = images[np.random.default_rng(seed).permutation(len(images))[:count]]
        labels = np.zeros(len(images), np.int64)
        noise = np.random.default_rng(seed)
        out[part] = make_batch(config.model, images, labels, noise).inputs.numpy()
    return out


def split_train_val(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(len(train) * fraction))
    val, fit = order[:n_val], order[n_val:]
    return (Split(train.images[fit], train.labels[fit]),
            Split(train.images[val], train.labels[val]))


def _load(config: TrainConfig) -> Split:
    if config.synthetic:
        train = synthetic_dataset(seed=config.seed)["train"]
    else:
        train = load_dataset(config.dataset, config.data_dir, config.allow_download)["train"]
    if config.max_train:
        train = Split(train.images[: config.max_train], train.labels[: config.max_train])
    return train


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, name: str, split: Split, batch_size: int,
                  seed: int) -> float:
    """Mean loss on `split` with a fixed corruption seed (full KL weight for VAEs)."""
    model.eval()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    saved = getattr(model, "kl_weight", None)
    if saved is not None:
        model.kl_weight = 1.0
    total, count = 0.0, 0
    for start in range(0, len(split), batch_size):
        sl = slice(start, start + batch_size)
        batch = make_batch(name, split.images[sl], split.labels[sl], rng)
        loss, _ = model.loss(batch)
        total += loss.item() * len(batch.target)
        count += len(batch.target)
    if saved is not None:
        model.kl_weight = saved
    model.train()
    return total / count


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train `config.model`; keep the best-validation weights; return them with the history."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    fit, val = split_train_val(_load(config), config.val_fraction, config.seed)
    model = build_model(config.model, **config.model_kwargs)
    if hasattr(model, "beta"):
        model.beta = config.beta
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(fit) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 0, "history": [], "best_val": float("inf"), "stale": 0, "elapsed": 0.0}
    if resume and (run_dir / "last.pt").is_file():
        ckpt = torch.load(run_dir / "last.pt", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed %s at epoch %d", run_dir, state["epoch"])

    started = time.perf_counter() - state["elapsed"]
    while state["epoch"] < config.epochs and state["stale"] < config.patience:
        epoch = state["epoch"]
        if hasattr(model, "kl_weight"):
            warm = config.kl_warmup_epochs
            model.kl_weight = min(1.0, (epoch + 1) / warm) if warm else 1.0
        rng = np.random.default_rng([config.seed, epoch])  # per epoch: resume is exact
        order = rng.permutation(len(fit))
        bar = tqdm(range(steps_per_epoch), desc=f"{config.model} {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        running = None
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss, logs = model.loss(make_batch(config.model, fit.images[idx], fit.labels[idx], rng))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v:.4f}" for k, v in logs.items()})
        val_loss = evaluate_loss(model, config.model, val, 512, config.seed)
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train_loss": running, "val_loss": val_loss,
                                 "lr": scheduler.get_last_lr()[0]})
        improved = val_loss < state["best_val"]
        if improved:
            state["best_val"], state["stale"] = val_loss, 0
            torch.save({"model": model.state_dict(), "config": asdict(config)},
                       run_dir / "best.pt")
        else:
            state["stale"] += 1
        state["elapsed"] = time.perf_counter() - started
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state,
                    "torch_rng": torch.get_rng_state(), "config": asdict(config)},
                   run_dir / "last.pt")
        log.info("%s epoch %d: train %.5f val %.5f%s", config.model, epoch + 1, running or 0,
                 val_loss, " (best)" if improved else "")
    if state["stale"] >= config.patience:
        log.info("%s: early stop after %d epochs", config.model, state["epoch"])

    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=False)["model"])
    model.eval()
    (run_dir / "history.json").write_text(json.dumps(state["history"], indent=2))
    return TrainResult(
        model=model, config=config, history=state["history"], best_val_loss=state["best_val"],
        epochs_run=state["epoch"], wall_time_s=round(time.perf_counter() - started, 1),
        train_examples=len(fit), val_examples=len(val), sample_images=val.images[:64],
    )
