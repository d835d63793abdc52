"""A small CNN classifier trained in the project, the judge of generated images.

`training.evaluate` uses it twice for the `cvae`: the accuracy of samples of a
requested class (does the sample show that class?) and the Frechet distance
between samples and test images in its penultimate-layer feature space (an
FID-style figure, but with a feature extractor trained on this very dataset,
as Inception features say little about 28x28 greyscale digits).

Trained on the training split only (a few epochs on the CPU, fixed seed) and
cached in `runs/classifier-<dataset>.pt` with its test accuracy; the cache is
reused only when the data checksums and the recipe match.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from training.data import Split, dataset_checksums

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierConfig:
    """The recipe; part of the cache key."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    width: int = 32
    features: int = 128


class SmallCNN(nn.Module):
    """conv32-pool-conv64-pool-fc128-fc10, batch norm after each conv: ~99 % on MNIST."""

    def __init__(self, width: int = 32, features: int = 128, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Linear(2 * width * 7 * 7, features)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


class Classifier:
    """A trained SmallCNN behind a numpy interface: images [N,1,28,28] in [0,1]."""

    def __init__(self, model: SmallCNN, info: dict):
        self.model = model.eval()
        self.info = info  # dataset, config, test_accuracy, train wall time, ...

    @property
    def test_accuracy(self) -> float:
        return float(self.info["test_accuracy"])

    @torch.no_grad()
    def _run(self, images: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = [], []
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch], np.float32))
            f = self.model.features(x)
            feats.append(f.numpy())
            logits.append(self.model.head(f).numpy())
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate-layer activations [N, 128], for Frechet distances."""
        return self._run(images)[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted classes [N] (int64)."""
        return self._run(images)[1].argmax(1).astype(np.int64)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(images) == np.asarray(labels)))


def train_classifier(
    train: Split, test: Split, config: ClassifierConfig = ClassifierConfig(), dataset: str = ""
) -> Classifier:
    """Train on `train` (seeded, light augmentation by 1-pixel shifts) and score on `test`."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SmallCNN(config.width, config.features)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * int(np.ceil(len(train) / config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(train))
        total = 0.0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            x = torch.from_numpy(_shift(train.images[idx], rng))
            loss = F.cross_entropy(model(x), torch.from_numpy(train.labels[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log.info("classifier epoch %d: train loss %.4f", epoch + 1, total / len(train))
    clf = Classifier(model, {})
    clf.info = {
        "dataset": dataset,
        "config": asdict(config),
        "train_examples": len(train),
        "test_examples": len(test),
        "test_accuracy": clf.accuracy(test.images, test.labels),
        "train_wall_time_s": round(time.perf_counter() - start, 1),
    }
    log.info("classifier %s: test accuracy %.4f", dataset, clf.test_accuracy)
    return clf


def _shift(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random shifts by up to one pixel (zero fill): a cheap, label-safe augmentation."""
    out = np.zeros_like(images)
    dy, dx = rng.integers(-1, 2, 2)
    h, w = images.shape[-2:]
    ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., yd, xd] = images[..., ys, xs]
    return out


def load_or_train(
    dataset: str,
    splits: dict[str, Split],
    runs_dir: Path = Path("runs"),
    config: ClassifierConfig = ClassifierConfig(),
) -> Classifier:
    """The cached classifier for `dataset` if its recipe and data match, else train and cache it."""
    path = Path(runs_dir) / f"classifier-{dataset}.pt"
    key = {"config": asdict(config), "data_sha256": dataset_checksums(dataset)}
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            model = SmallCNN(config.width, config.features)
            model.load_state_dict(saved["state_dict"])
            log.info("classifier loaded from %s", path)
            return Classifier(model, saved["info"])
        log.info("%s was made with another recipe or data; retraining", path)
    clf = train_classifier(splits["train"], splits["test"], config, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "state_dict": clf.model.state_dict(), "info": clf.info}, path)
    return clf
