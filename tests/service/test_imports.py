"""The serving path never imports torch or the training package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_service_imports_no_torch(tiny_models_dir: Path):
    code = (
        "import sys, service.service\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "AE_MODELS_DIR": str(tiny_models_dir), "BENTOML_DO_NOT_TRACK": "True"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
