"""`bentoml build` accepts bentofile.yaml and packs the service, the models and the manifest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from service.manifest import load_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bento_holds_models_and_manifest(tiny_models_dir: Path, tmp_path: Path):
    context = tmp_path / "context"  # the repo's bentofile and service, with the tiny models
    shutil.copytree(
        REPO_ROOT / "service", context / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO_ROOT / "bentofile.yaml", context)
    shutil.copytree(tiny_models_dir, context / "exported_models")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE_")}
    env.update(BENTOML_HOME=str(tmp_path / "home"), BENTOML_DO_NOT_TRACK="True")
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(context)],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (bento,) = [
        p for p in (tmp_path / "home" / "bentos" / "autoencoders").iterdir() if p.name != "latest"
    ]
    src = bento / "src"
    assert (src / "service" / "service.py").is_file() and (
        src / "service" / "manifest.py"
    ).is_file()
    manifest = load_manifest(tiny_models_dir)
    served = sorted(Path(g.path) for e in manifest.models for g in e.files.values())
    packed = sorted(p.relative_to(src / "exported_models") for p in src.rglob("*.onnx"))
    assert packed == served and len(served) == 22  # not the float32 sources of int8 graphs
    assert len(list(tiny_models_dir.rglob("*.float32.onnx"))) == 2
    assert (src / "exported_models/manifest.json").read_bytes() == (
        tiny_models_dir / "manifest.json"
    ).read_bytes()
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service.service:Autoencoders"
    packages = (bento / "env/python/requirements.txt").read_text()
    for package in ("bentoml", "onnxruntime", "orjson", "pillow"):
        assert package in packages
