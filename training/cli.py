"""Command line: train, export, evaluate and document the models.

    python -m training train --dataset mnist --model vae       # one model
    python -m training train-all --dataset mnist --jobs 2       # the whole set, 2 at a time
    python -m training evaluate --dataset mnist                 # metrics -> manifest
    python -m training figures --dataset mnist                  # PNGs
    python -m training card                                     # exported_models/README.md

Data: `--data-dir` or $AE_DATA_DIR (a folder holding mnist/ and fashion-mnist/);
`--download` fetches the official files when absent (verified by sha256).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from training.data import DATASETS, DataError
from training.models import MODELS
from training.train import RECIPE_COST, RECIPES

MODELS_DIR = Path("exported_models")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=list(DATASETS), default="mnist")
    parser.add_argument("--data-dir", help="folder holding mnist/ and fashion-mnist/ "
                        "(default: $AE_DATA_DIR, else ./data)")
    parser.add_argument("--download", action="store_true",
                        help="download the official files if they are missing")
    parser.add_argument("--out", type=Path, default=MODELS_DIR,
                        help="where ONNX files and manifest.json go")


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--beta", type=float, help="VAE: KL weight after warm-up")
    parser.add_argument("--kl-warmup-epochs", type=int)
    parser.add_argument("--patience", type=int, help="early stopping patience (epochs)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--max-train", type=int, help="use only the first N training images")
    parser.add_argument("--synthetic", action="store_true", help="tiny fake data (smoke test)")
    parser.add_argument("--resume", action="store_true", help="continue from runs/.../last.pt")
    parser.add_argument("--runs-dir", default="runs", help="checkpoints and histories")
    parser.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("train", help="train and export one model")
    one.add_argument("--model", choices=list(MODELS), required=True)
    every = sub.add_parser("train-all", help="train and export every model of a dataset")
    every.add_argument("--models", nargs="+", choices=list(MODELS), default=list(RECIPES))
    every.add_argument("--jobs", type=int, default=1,
                       help="models trained at once, in separate processes; each gets "
                       "cores // jobs threads unless --threads says otherwise")
    for p in (one, every):
        _common(p)
        _train_options(p)
    ev = sub.add_parser("evaluate", help="evaluate exported ONNX models on the test split")
    _common(ev)
    ev.add_argument("--models", nargs="+", choices=list(MODELS))
    ev.add_argument("--max-test", type=int, help="evaluate on the first N test images only")
    ev.add_argument("--iwae-k", type=int, default=1000, help="importance samples (0: skip NLL)")
    ev.add_argument("--iwae-images", type=int,
                    help="IWAE bound on the first N test images only (default: all)")
    ev.add_argument("--cvae-nll", action="store_true", help="also the cvae's IWAE bound")
    ev.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    again = sub.add_parser("reexport", help="re-export shipped models with the current export "
                           "code, from their own weights (then run evaluate)")
    _common(again)
    again.add_argument("--models", nargs="+", choices=list(MODELS))
    again.add_argument("--runs-dir", type=Path, default=Path("runs"),
                       help="checkpoints, used when they reproduce the shipped graphs")
    fig = sub.add_parser("figures", help="draw reconstructions, samples and latent maps")
    _common(fig)
    card = sub.add_parser("card", help="write the model card from the manifest")
    card.add_argument("--out", type=Path, default=MODELS_DIR)
    return parser


def _config(args: argparse.Namespace, model: str):
    from training.train import TrainConfig

    overrides = {
        key: value
        for key in ("epochs", "batch_size", "lr", "seed", "beta", "kl_warmup_epochs",
                    "patience", "threads", "max_train")
        if (value := getattr(args, key)) is not None
    }
    return TrainConfig.for_model(
        model, dataset=args.dataset, data_dir=args.data_dir, allow_download=args.download,
        synthetic=args.synthetic, runs_dir=args.runs_dir, **overrides,
    )


def _train_one(args: argparse.Namespace, model: str) -> tuple:
    from training.export import train_and_export

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the exporter's pass-by-pass notes
    entry = train_and_export(_config(args, model), args.out, resume=args.resume,
                             progress=not args.no_progress)
    t = entry.training
    return model, t.epochs, t.best_validation_loss, t.wall_time_s, entry.parity_max_abs_diff


def _train(args: argparse.Namespace, models: list[str]) -> int:
    start = time.perf_counter()
    jobs = max(1, min(getattr(args, "jobs", 1), len(models)))
    if jobs == 1:
        rows = [_train_one(args, model) for model in models]
    else:
        # Several single-threaded trainings beat one two-threaded one on a small machine
        # (small convs scale poorly across threads). Longest recipes first, so that the
        # last to finish is a short one. The manifest is written under a file lock.
        if args.threads is None:
            args.threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        order = sorted(models, key=lambda m: -RECIPE_COST.get(m, 0))
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = dict((r[0], r) for r in pool.map(_train_one, [args] * len(order), order))
        rows = [done[m] for m in models]
    print(f"\n{'model':<13}{'epochs':>7}{'best val loss':>15}{'wall s':>9}{'parity':>10}")
    for model, epochs, val, wall, par in rows:
        print(f"{model:<13}{epochs:>7}{val:>15.5f}{wall:>9.1f}{par:>10.1e}")
    print(f"total {(time.perf_counter() - start) / 60:.1f} min wall ({jobs} job(s); "
          f"{sum(r[3] for r in rows) / 60:.1f} min summed over models); "
          f"manifest: {args.out / 'manifest.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the exporter's pass-by-pass notes
    try:
        if args.command == "train":
            return _train(args, [args.model])
        if args.command == "train-all":
            return _train(args, args.models)
        if args.command == "evaluate":
            from training.evaluate import evaluate_models

            evaluate_models(args.dataset, args.out, args.data_dir, names=args.models,
                            max_test=args.max_test, iwae_k=args.iwae_k, threads=args.threads,
                            cvae_nll=args.cvae_nll, iwae_images=args.iwae_images)
            return 0
        if args.command == "reexport":
            from training.reexport import reexport

            for entry in reexport(args.dataset, args.out, args.runs_dir, names=args.models,
                                  data_dir=args.data_dir, allow_download=args.download):
                print(f"{entry.dataset}/{entry.name}: re-exported, parity "
                      f"{entry.parity_max_abs_diff:.1e}; metrics cleared until evaluate")
            return 0
        if args.command == "figures":
            from training.figures import make_figures

            make_figures(args.dataset, args.out, args.data_dir)
            return 0
        if args.command == "card":
            from training.card import write_card

            write_card(args.out)
            return 0
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    return 1
