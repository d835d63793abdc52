"""Service configuration: one frozen object read from `AE_*` environment variables.

Every limit the API documents lives here, with its default, so that operators
tune the service without touching code. Read once per process
(`get_settings()`); tests build their own with `Settings.from_env(environ)`.

| variable | default | meaning |
| --- | --- | --- |
| `AE_MODELS_DIR` | `<repo>/exported_models` | folder holding `manifest.json` |
| `AE_API_KEY` | unset | when set, `Authorization: Bearer <key>` is required |
| `AE_MAX_BATCH` | 2048 | images (or latent rows) per request |
| `AE_MAX_N` | 1024 | `n` for `generate` |
| `AE_MAX_IMAGE_SIDE` | 512 | height or width of an input image, pixels |
| `AE_MAX_PIXELS` | 16777216 | output pixels per request (N x H x W after upscaling) |
| `AE_MAX_REQUEST_BYTES` | 33554432 | request body size; larger bodies get 413 unread |
| `AE_WORKERS` | 1 | BentoML worker processes |
| `AE_THREADS` | cores // workers | threads per worker that run onnxruntime, each on a share of a
|  |  | call's rows with a single-threaded session (at most cores // workers) |
| `AE_BATCH_PIXELS` | 50176 | image pixels per onnxruntime call (64 28x28 images): merged |
|  |  | requests stop there and bigger requests run in chunks (up to `AE_THREADS` |
|  |  | at once; a 28x28 call's rows are shared by them), bounding the arena |
| `AE_PRELOAD` | 0 | 1: open every model's onnxruntime session at start, not on first use |
| `AE_ACCESS_LOG` | 0 | 1: BentoML's access log, one line per request |
| `AE_TRACING` | 0 | 1: OpenTelemetry spans per request (set BentoML's tracing exporter) |
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFIX = "AE_"


def available_cores() -> int:
    """CPU cores this process may use: affinity mask, capped by a cgroup v2 quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(PREFIX + name) or "0").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(f"{PREFIX}{name}={raw!r} is not 0 or 1")
    return raw in ("1", "true", "yes")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{PREFIX}{name}={value} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the service; see the module docstring for variables."""

    models_dir: Path = REPO_ROOT / "exported_models"
    api_key: str | None = None
    max_batch: int = 2048
    max_n: int = 1024
    max_image_side: int = 512
    max_pixels: int = 1 << 24
    max_request_bytes: int = 32 << 20
    workers: int = 1
    threads: int = 1
    # 64 rows: denoising 1,024 images adds 64 MB (256 rows: 204 MB; `python -m benchmarks.memory`).
    batch_pixels: int = 64 * 28 * 28
    preload: bool = False
    access_log: bool = False
    tracing: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default `os.environ`); raise ValueError on a bad value."""
        env = os.environ if env is None else env
        workers = _int(env, "WORKERS", 1)
        budget = max(1, available_cores() // workers)  # workers x threads <= cores
        threads = min(_int(env, "THREADS", budget), budget)
        models_dir = env.get(PREFIX + "MODELS_DIR") or str(cls.models_dir)
        return cls(
            models_dir=Path(models_dir).expanduser().resolve(),
            api_key=env.get(PREFIX + "API_KEY") or None,
            max_batch=_int(env, "MAX_BATCH", cls.max_batch),
            max_n=_int(env, "MAX_N", cls.max_n),
            max_image_side=_int(env, "MAX_IMAGE_SIDE", cls.max_image_side),
            max_pixels=_int(env, "MAX_PIXELS", cls.max_pixels),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", cls.max_request_bytes),
            workers=workers,
            threads=threads,
            batch_pixels=_int(env, "BATCH_PIXELS", cls.batch_pixels),
            preload=_flag(env, "PRELOAD"),
            access_log=_flag(env, "ACCESS_LOG"),
            tracing=_flag(env, "TRACING"),
        )

    def limits(self) -> dict[str, int]:
        """The documented limits, as served under `/models`."""
        return {
            "max_batch": self.max_batch,
            "max_n": self.max_n,
            "max_image_side": self.max_image_side,
            "max_pixels": self.max_pixels,
            "max_request_bytes": self.max_request_bytes,
        }


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
