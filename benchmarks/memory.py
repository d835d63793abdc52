"""In-process memory of the service's building blocks, each measured in a fresh process.

    python -m benchmarks.memory --out memory.json      # ~1 min

The figures behind the service's memory choices (docs/PERFORMANCE.md, "Memory"):
- `sessions_from_bytes` / `sessions_memfd`: RSS added by opening every graph of the
  manifest, from bytes vs the way `service.registry` does it (verified bytes through a
  memfd path);
- `arena_private` / `arena_shared`: RSS after running every graph at batch 256, with one
  onnxruntime arena per session vs one shared arena (the service's options);
- `denoiser_rows_<n>`: RSS added by denoising 1,024 images in calls of n rows.
Every process first fixes glibc's mmap threshold, as the service does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PROGRAM = r"""
import sys, json
import numpy as np, onnxruntime as ort
from pathlib import Path
from service.heap import return_large_buffers_to_os
from service.manifest import load_manifest
from service.registry import Registry, _session_from_bytes, session_options

return_large_buffers_to_os()
case, root = sys.argv[1], Path(sys.argv[2])

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

def feeds(session, name, rows):
    out = {}
    for i in session.get_inputs():
        if i.type == "tensor(int64)":
            out[i.name] = np.zeros(rows, np.int64)
        elif len(i.shape) == 2:
            out[i.name] = np.zeros((rows, i.shape[1]), np.float32)
        else:
            side = 28 // int(name[-1]) if name.startswith("upscaler_x") else 28
            out[i.name] = np.random.rand(rows, 1, side, side).astype(np.float32)
    return out

manifest = load_manifest(root)
files = [(e, root / s.path) for e in manifest.models for s in e.files.values()]
base = rss_mb()
if case.startswith("sessions"):
    options = session_options(2)
    kept = [ort.InferenceSession(p.read_bytes(), options, providers=["CPUExecutionProvider"])
            if case == "sessions_from_bytes" else _session_from_bytes(p.read_bytes(), options)
            for _, p in files]
elif case.startswith("arena"):
    options = session_options(2)
    if case == "arena_private":
        options.add_session_config_entry("session.use_env_allocators", "0")
    kept = []
    for entry, path in files:
        session = _session_from_bytes(path.read_bytes(), options)
        session.run(None, feeds(session, entry.name, 256))
        kept.append(session)
else:
    rows = int(case.rsplit("_", 1)[1])
    graph = Registry.open(root, threads=2).graph("mnist", "denoiser", "model")
    images = np.random.rand(1024, 1, 28, 28).astype(np.float32)
    for start in range(0, 1024, rows):
        graph.run({"image": images[start:start + rows]})
print(json.dumps({"case": case, "added_mb": rss_mb() - base, "graphs": len(files)}))
"""

CASES = ("sessions_from_bytes", "sessions_memfd", "arena_private", "arena_shared",
         "denoiser_rows_256", "denoiser_rows_64")


def measure(models_dir: Path, cases: tuple[str, ...] = CASES) -> list[dict]:
    rows = []
    for case in cases:
        done = subprocess.run([sys.executable, "-c", PROGRAM, case, str(models_dir)],
                              cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{case:22s} +{row['added_mb']:6.0f} MB ({row['graphs']} graphs in the manifest)",
              flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "exported_models")
    parser.add_argument("--only", nargs="+", choices=CASES)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args.models_dir, tuple(args.only or CASES))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
