"""The training loop: validation split, checkpoints, resume, early stopping, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from service.manifest import load_manifest
from training import cli
from training.data import synthetic_dataset
from training.train import TrainConfig, split_train_val, train

TINY = {"width": 4, "hidden": 16}


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(model="ae", epochs=2, batch_size=64, lr=3e-3, synthetic=True,
                model_kwargs=TINY, threads=1, runs_dir=str(tmp_path))
    return TrainConfig(**{**base, **kw})


def test_validation_split_is_disjoint_and_seeded():
    train_split = synthetic_dataset(n_train=100)["train"]
    fit, val = split_train_val(train_split, 0.2, seed=3)
    assert (len(fit), len(val)) == (80, 20)
    fit2, val2 = split_train_val(train_split, 0.2, seed=3)
    np.testing.assert_array_equal(val.images, val2.images)
    joined = np.concatenate([fit.images, val.images]).reshape(100, -1)
    assert len(np.unique(joined, axis=0)) == 100


def test_train_writes_checkpoints_history_and_keeps_best(tmp_path):
    result = train(config(tmp_path), progress=False)
    run = tmp_path / "mnist" / "ae"
    assert {"best.pt", "last.pt", "history.json"} <= {p.name for p in run.iterdir()}
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert result.best_val_loss == min(h["val_loss"] for h in history)
    assert result.epochs_run == 2 and result.train_examples + result.val_examples == 512


def test_resume_continues_where_it_stopped(tmp_path):
    first = train(config(tmp_path, epochs=3), progress=False)
    # A second run of the same config resumes from last.pt and has nothing left to do.
    again = train(config(tmp_path, epochs=3), resume=True, progress=False)
    assert again.history == first.history
    assert again.epochs_run == 3


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    full = train(config(tmp_path / "a", epochs=2, patience=9), progress=False)

    import training.train as train_module

    real_eval, calls = train_module.evaluate_loss, []

    def crash_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session is cut off before epoch 2's checkpoint
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_loss", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b", epochs=2, patience=9), progress=False)
    monkeypatch.setattr(train_module, "evaluate_loss", real_eval)
    resumed = train(config(tmp_path / "b", epochs=2, patience=9), resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_early_stopping(tmp_path):
    result = train(config(tmp_path, epochs=5, lr=1e-9, patience=1), progress=False)
    assert result.epochs_run < 5


def test_cli_trains_and_exports(tmp_path, capsys):
    code = cli.main(["train", "--model", "upscaler_x4", "--synthetic", "--epochs", "1",
                     "--threads", "1", "--out", str(tmp_path / "out"),
                     "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    assert code == 0
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert "parity" in capsys.readouterr().out


def test_cli_train_all_in_parallel_jobs(tmp_path, capsys):
    """`--jobs 2`: two processes write one manifest (under its lock); both models land."""
    code = cli.main(["train-all", "--models", "upscaler_x2", "upscaler_x4", "--jobs", "2",
                     "--synthetic", "--epochs", "1", "--out", str(tmp_path / "out"),
                     "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    assert code == 0
    manifest = load_manifest(tmp_path / "out")
    assert sorted(m.name for m in manifest.models) == ["upscaler_x2", "upscaler_x4"]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # cores // jobs
    assert all(m.training.config["threads"] == threads for m in manifest.models)
    assert "2 job(s)" in capsys.readouterr().out


def test_cli_reports_missing_data(tmp_path, capsys):
    code = cli.main(["train", "--model", "ae", "--data-dir", str(tmp_path), "--epochs", "1",
                     "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "data error" in capsys.readouterr().err


@pytest.mark.realdata
def test_short_run_on_real_mnist(real_data_dir, tmp_path):
    result = train(TrainConfig(model="ae", epochs=1, max_train=2000, data_dir=str(real_data_dir),
                               model_kwargs=TINY, threads=1, runs_dir=str(tmp_path)),
                   progress=False)
    assert result.train_examples == 1800
    assert result.best_val_loss < 0.69  # better than predicting 0.5 everywhere (BCE ln 2)
