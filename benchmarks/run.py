"""The benchmark: every figure of DESIGN section 8, measured side by side in one run.

    python -m benchmarks --out results.json          # full run (~6 min on 2 cores)
    python -m benchmarks --smoke --out smoke.json    # seconds; what CI runs
    python -m benchmarks --sweep --plot docs/performance.png   # plus batch/concurrency sweep

Steps, in order: torch eager vs onnxruntime per graph (batch 256) and
onnxruntime's in-process images/s at batch 1,024 (the limit); start the service
(`bentoml serve`, timed to `/readyz` = 200) and the FastAPI baseline (same
workers); check both answer the same request alike; drive the service's binary
`.npy` path; then JSON batches (256 images) and single-image requests at
concurrency 32 on both, alternating service and baseline round by round (ABBA)
so that drift on a noisy machine hits both. The load generator
(`benchmarks.loadgen`) runs in its own process pinned to the last CPU; its own
CPU use is reported. The RSS of the service's worker is sampled from /proc
throughout. Endpoints: `encode` with `ae` (28x28 -> 16 floats, so serving
overhead dominates) and `denoise` (28x28 -> 28x28, the heaviest graph and the
biggest answers). Bars are reported, not enforced, unless `--check`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks import inprocess
from benchmarks.models import NEEDED, build_standin, has_models
from benchmarks.servers import REPO_ROOT, RssSampler, Server, start_baseline, start_service
from service.manifest import load_manifest
from service.settings import available_cores

log = logging.getLogger("benchmarks")
MiB = 1 << 20


@dataclass(frozen=True)
class Plan:
    """How long each step runs: `FULL` for the figures, `SMOKE` to prove it all still works."""

    graphs: tuple[str, ...] | None  # models in the torch comparison (None: all)
    torch_time: float  # seconds per graph and engine
    inproc_time: float
    warmup: float
    duration: float  # measured seconds of a throughput scenario
    single_requests: int  # measured single-image requests, per server, endpoint and round
    rounds: int
    binary_concurrency: int = 4
    batch_concurrency: int = 4
    single_concurrency: int = 32
    json_batch: int = 256
    binary_batch: int = 1024
    torch_batch: int = 256
    memory_requests: int = 10_000


FULL = Plan(None, 1.0, 2.0, 2.0, 10.0, 3000, 2)
SMOKE = Plan(("ae", "denoiser"), 0.05, 0.1, 0.2, 0.8, 150, 1, memory_requests=0)
BARS = {
    "ort_vs_torch": (">=", 1.0),
    "binary_vs_inprocess": (">=", 0.40),
    "json_batch_vs_baseline": (">=", 2.0),
    "single_rps_vs_baseline": (">=", 1.0),
    "single_p99_vs_baseline": ("<=", 1.5),
    "start_to_ready_s": ("<=", 10.0),
    "worker_rss_mb": ("<=", 300.0),
}
ENDPOINTS = {  # name -> (JSON path, file path, request fields, graph)
    "encode": ("/encode", "/encode_file?model=ae&dataset={d}", {"model": "ae"}, "ae.encoder"),
    "denoise": ("/denoise", "/denoise_file?dataset={d}", {}, "denoiser"),
}


def _meets(name: str, value: float) -> bool:
    op, bar = BARS[name]
    return value >= bar if op == ">=" else value <= bar


# ------------------------------------------------------------------ bodies and load


def _write_bodies(folder: Path, bodies: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, body in enumerate(bodies):
        (folder / f"{i:04d}.bin").write_bytes(body)
    return folder


def json_bodies(folder: Path, fields: dict, batch: int, count: int, seed: int = 1) -> Path:
    """`count` different JSON bodies of `batch` images each (float32 values, as clients send)."""
    bodies = []
    for i in range(count):
        pixels = inprocess.images(batch, seed=seed + i)
        payload = {**fields, "images": pixels}
        bodies.append(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
    return _write_bodies(folder, bodies)


def npy_body(batch: int, seed: int = 7) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, inprocess.images(batch, seed=seed), allow_pickle=False)
    return buffer.getvalue()


def loadgen_cpu() -> int | None:
    """The CPU the load generator is pinned to: the last one, if there are two or more."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    return cpus[-1] if len(cpus) > 1 else None


def drive(
    url: str,
    bodies: Path,
    *,
    concurrency: int,
    warmup: float,
    duration: float | None = None,
    requests: int | None = None,
    content_type: str = "application/json",
) -> dict:
    """One load run in a separate, pinned process; its JSON summary."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        url,
        "--bodies",
        str(bodies),
        "--content-type",
        content_type,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
    ]
    command += ["--duration", str(duration)] if duration is not None else []
    command += ["--requests", str(requests)] if requests is not None else []
    cpu = loadgen_cpu()
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def _post(url: str, body: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


# ------------------------------------------------------------------ the run


class Bench:
    """One benchmark run: state shared by its steps, and the figures it produces."""

    def __init__(self, args: argparse.Namespace, plan: Plan, workdir: Path):
        self.args = args
        self.plan = plan
        self.workdir = workdir
        self.dataset = args.dataset
        self.workers = args.workers
        self.threads = max(1, available_cores() // self.workers)
        self.results: dict = {"figures": {}, "scenarios": []}
        self.service_requests = 0
        self.rss: RssSampler | None = None

    # ---------------------------------------------------------------- models

    def models_dir(self) -> Path:
        chosen = Path(self.args.models_dir).resolve()
        if has_models(chosen, self.dataset):
            return chosen
        if self.args.models_dir_given:
            raise SystemExit(f"{chosen} lacks {', '.join(NEEDED)} for {self.dataset}")
        standin = REPO_ROOT / "runs" / "bench-models"
        if not has_models(standin, self.dataset):
            log.warning("%s lacks %s: exporting a stand-in set", chosen, ", ".join(NEEDED))
            shutil.rmtree(standin, ignore_errors=True)
            build_standin(standin, self.dataset, REPO_ROOT / "runs")
        return standin

    # ---------------------------------------------------------------- in-process

    def torch_vs_ort(self, models_dir: Path) -> None:
        manifest = load_manifest(models_dir)
        names = list(self.plan.graphs) if self.plan.graphs else None
        graphs = inprocess.torch_graphs(
            manifest,
            models_dir,
            self.dataset,
            names,
            Path(self.args.runs_dir),
            scratch=self.workdir / "onnx",
        )
        rows = inprocess.torch_vs_ort(
            graphs, self.plan.torch_batch, self.threads, self.plan.torch_time
        )
        worst = min(r["ratio"] for r in rows)
        self.results["figures"]["ort_vs_torch"] = {
            "what": f"torch eager ms / onnxruntime ms per graph, batch {self.plan.torch_batch}, "
            f"{self.threads} threads each, in-process",
            "rows": rows,
            "ratio": worst,
            "met": _meets("ort_vs_torch", worst),
        }

    def inprocess_limit(self, models_dir: Path) -> dict[str, float]:
        """onnxruntime images/s at the binary batch size, per endpoint's graph."""
        manifest = load_manifest(models_dir)
        batch = inprocess.images(self.plan.binary_batch, seed=7)[:, None]
        out = {}
        for endpoint, (_, _, _, graph) in ENDPOINTS.items():
            name, _, role = graph.partition(".")
            spec = manifest.get(self.dataset, name).files[role or "model"]
            out[endpoint] = inprocess.ort_images_per_s(
                models_dir / spec.path,
                spec.inputs[0].name,
                batch,
                self.threads,
                self.plan.inproc_time,
            )
        return out

    # ---------------------------------------------------------------- servers

    def check_same_answers(self, service: Server, baseline: Server) -> dict:
        """Both servers answer one request alike (they do the same work)."""
        worst = {}
        for endpoint, (path, _, fields, _) in ENDPOINTS.items():
            pixels = inprocess.images(4, seed=99)
            body = orjson.dumps(
                {**fields, "dataset": self.dataset, "images": pixels},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            a = orjson.loads(_post(service.url + path, body, "application/json"))
            b = orjson.loads(_post(baseline.url + path, body, "application/json"))
            key = "latents" if endpoint == "encode" else "images"
            diff = float(np.abs(np.asarray(a[key]) - np.asarray(b[key])).max())
            if set(a) != set(b) or diff > 1e-4:
                raise RuntimeError(f"{endpoint}: service and baseline disagree (max diff {diff})")
            worst[endpoint] = diff
        return worst

    def _scenario(self, server: Server, label: str, bodies: Path, **load) -> dict:
        cpu0 = server.cpu_s()
        result = drive(server.url + load.pop("path"), bodies, **load)
        served = result["requests"] + result["warmup_requests"]
        result.update(server=server.name, scenario=label)
        # CPU per request barely moves when other processes steal cores; throughput does.
        result["server_cpu_ms_per_request"] = 1e3 * (server.cpu_s() - cpu0) / max(1, served)
        if server.name == "service":
            self.service_requests += served
            if self.rss is not None:
                result["worker_rss_mb"] = self.rss.mark(label, self.service_requests)
        self.results["scenarios"].append(result)
        log.info(
            "%-8s %-24s %8.1f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d  "
            "server cpu %.2f ms/req  client cpu %.0f%%",
            server.name,
            label,
            result["rps"],
            result["latency_ms"]["p50"],
            result["latency_ms"]["p99"],
            result["errors"],
            result["server_cpu_ms_per_request"],
            100 * result["client_cpu"],
        )
        return result

    def binary_path(self, service: Server, models_dir: Path, before: dict) -> None:
        """The .npy path against onnxruntime in-process; the limit is measured again after
        the load, and the mean of the two brackets it (drift shows in the JSON)."""
        plan = self.plan
        body = npy_body(plan.binary_batch)
        runs = {}
        for endpoint, (_, file_path, _, _) in ENDPOINTS.items():
            bodies = _write_bodies(self.workdir / "bodies" / f"npy-{endpoint}", [body])
            runs[endpoint] = self._scenario(
                service,
                f"{endpoint}_file npy x{plan.binary_batch}",
                bodies,
                path=file_path.format(d=self.dataset),
                concurrency=plan.binary_concurrency,
                warmup=plan.warmup,
                duration=plan.duration,
                content_type="application/x-npy",
            )
        after = self.inprocess_limit(models_dir)
        rows = {}
        for endpoint, run in runs.items():
            limit = (before[endpoint] + after[endpoint]) / 2
            images_s = run["ok_rps"] * plan.binary_batch
            rows[endpoint] = {
                "service_images_s": images_s,
                "inprocess_images_s": limit,
                "inprocess_before_after": [before[endpoint], after[endpoint]],
                "ratio": images_s / limit,
                "latency_ms": run["latency_ms"],
                "errors": run["errors"],
                "requests": run["requests"],
            }
        ratio = min(r["ratio"] for r in rows.values())
        self.results["figures"]["binary_vs_inprocess"] = {
            "what": f".npy bodies of {plan.binary_batch} images to /encode_file (ae) and "
            f"/denoise_file, concurrency {plan.binary_concurrency}, vs onnxruntime in-process "
            "at the same batch with the service's session options",
            "endpoints": rows,
            "ratio": ratio,
            "met": _meets("binary_vs_inprocess", ratio),
        }

    def json_rounds(self, service: Server, baseline: Server) -> None:
        plan = self.plan
        servers = (service, baseline)
        batch_runs: dict[tuple[str, str], list[dict]] = {}
        single_runs: dict[tuple[str, str], list[dict]] = {}
        for endpoint, (path, _, fields, _) in ENDPOINTS.items():
            fields = {**fields, "dataset": self.dataset}
            folder = self.workdir / "bodies"
            batch_bodies = json_bodies(
                folder / f"{endpoint}-{plan.json_batch}", fields, plan.json_batch, 4
            )
            single_bodies = json_bodies(folder / f"{endpoint}-1", fields, 1, 64)
            for r in range(plan.rounds):
                for server in servers if r % 2 == 0 else servers[::-1]:  # ABBA
                    batch_runs.setdefault((endpoint, server.name), []).append(
                        self._scenario(
                            server,
                            f"{endpoint} json x{plan.json_batch}",
                            batch_bodies,
                            path=path,
                            concurrency=plan.batch_concurrency,
                            warmup=plan.warmup,
                            duration=plan.duration,
                        )
                    )
                for server in servers if r % 2 == 0 else servers[::-1]:
                    single_runs.setdefault((endpoint, server.name), []).append(
                        self._scenario(
                            server,
                            f"{endpoint} json x1 c{plan.single_concurrency}",
                            single_bodies,
                            path=path,
                            concurrency=plan.single_concurrency,
                            warmup=plan.warmup,
                            requests=plan.single_requests,
                        )
                    )
        figures = self.results["figures"]
        figures["json_batch_vs_baseline"] = self._compare(
            batch_runs,
            "json_batch_vs_baseline",
            "images_s",
            plan.json_batch,
            f"JSON bodies of {plan.json_batch} images, concurrency {plan.batch_concurrency}, "
            "images/s, service / baseline",
        )
        figures["single_rps_vs_baseline"] = self._compare(
            single_runs,
            "single_rps_vs_baseline",
            "rps",
            1,
            f"one image per JSON request, concurrency {plan.single_concurrency}, requests/s "
            "(ok answers only), service / baseline; zero errors required",
        )
        figures["single_p99_vs_baseline"] = self._compare(
            single_runs,
            "single_p99_vs_baseline",
            "p99_ms",
            1,
            f"p99 latency of one-image requests at concurrency {plan.single_concurrency}, "
            "service / baseline",
        )

    def _compare(self, runs: dict, figure: str, measure: str, batch: int, what: str) -> dict:
        rows, ratios, errors = {}, [], 0
        for endpoint in ENDPOINTS:
            summary = {}
            for name in ("service", "baseline"):
                group = runs[(endpoint, name)]
                summary[name] = {
                    "rps": float(np.mean([g["ok_rps"] for g in group])),
                    "images_s": float(np.mean([g["ok_rps"] for g in group])) * batch,
                    "p50_ms": float(np.mean([g["latency_ms"]["p50"] for g in group])),
                    "p99_ms": float(np.mean([g["latency_ms"]["p99"] for g in group])),
                    "errors": int(sum(g["errors"] for g in group)),
                    "requests": int(sum(g["requests"] for g in group)),
                    "per_round": [g["ok_rps"] * batch for g in group],
                    "client_cpu": float(max(g["client_cpu"] for g in group)),
                    "server_cpu_ms_per_request": float(
                        np.mean([g["server_cpu_ms_per_request"] for g in group])
                    ),
                }
            ratio = summary["service"][measure] / summary["baseline"][measure]
            summary["ratio"] = ratio
            rows[endpoint] = summary
            ratios.append(ratio)
            errors += summary["service"]["errors"]
        op, _ = BARS[figure]
        ratio = min(ratios) if op == ">=" else max(ratios)
        met = _meets(figure, ratio)
        if figure == "single_rps_vs_baseline":
            met = met and errors == 0
        return {
            "what": what,
            "endpoints": rows,
            "ratio": ratio,
            "met": met,
            "service_errors": errors,
        }

    def memory(self) -> None:
        marks = self.rss.marks if self.rss else []
        samples = self.rss.samples if self.rss else []
        final = marks[-1][1] if marks else float("nan")
        single = [m for m in marks if " x1 " in m[0]]
        start = single[0] if single else (marks[0] if marks else ("", final, 0))
        growth = final - start[1]
        flat = growth <= max(10.0, 0.05 * final)
        enough = self.service_requests >= self.plan.memory_requests
        self.results["figures"]["worker_rss_mb"] = {
            "what": "largest RSS of the service's worker process(es), /proc VmRSS, after the "
            "whole run; flat: growth from the first single-image scenario to the end <= "
            "max(10 MB, 5 %)",
            "ratio": final,
            "requests_served": self.service_requests,
            "requests_required": self.plan.memory_requests,
            "growth_mb": growth,
            "growth_from": {"scenario": start[0], "rss_mb": start[1], "requests": start[2]},
            "max_mb": max((s[1] for s in samples), default=final),
            "marks": [{"after": m[0], "rss_mb": m[1], "requests": m[2]} for m in marks],
            "samples": [
                [round(t, 2), round(v, 1)] for t, v in samples[:: max(1, len(samples) // 200)]
            ],
            "flat": flat,
            "met": _meets("worker_rss_mb", final) and flat and enough,
        }

    # ---------------------------------------------------------------- sweep

    def sweep(self, service: Server, baseline: Server, models_dir: Path) -> None:
        """encode: images/s against batch size (c=4), and requests/s and p99 against concurrency."""
        manifest = load_manifest(models_dir)
        spec = manifest.get(self.dataset, "ae").files["encoder"]
        path, _, fields, _ = ENDPOINTS["encode"]
        fields = {**fields, "dataset": self.dataset}
        duration, warmup = max(1.0, self.plan.duration / 3), min(1.0, self.plan.warmup)
        batches, concurrencies = [1, 16, 64, 256, 1024], [1, 4, 16, 32, 64]
        out: dict = {"batch": {}, "concurrency": {}}
        for batch in batches:
            bodies = json_bodies(self.workdir / "bodies" / f"sweep-{batch}", fields, batch, 2)
            row = {}
            for server in (service, baseline):
                run = self._scenario(
                    server,
                    f"sweep encode x{batch} c4",
                    bodies,
                    path=path,
                    concurrency=4,
                    warmup=warmup,
                    duration=duration,
                )
                row[server.name] = {
                    "images_s": run["ok_rps"] * batch,
                    **run["latency_ms"],
                    "errors": run["errors"],
                }
            x = inprocess.images(batch)[:, None]
            row["inprocess"] = {
                "images_s": inprocess.ort_images_per_s(
                    models_dir / spec.path, spec.inputs[0].name, x, self.threads, 0.5
                )
            }
            out["batch"][batch] = row
        bodies = self.workdir / "bodies" / "encode-1"
        for c in concurrencies:
            row = {}
            for server in (service, baseline):
                run = self._scenario(
                    server,
                    f"sweep encode x1 c{c}",
                    bodies,
                    path=path,
                    concurrency=c,
                    warmup=warmup,
                    duration=duration,
                )
                row[server.name] = {
                    "rps": run["ok_rps"],
                    **run["latency_ms"],
                    "errors": run["errors"],
                }
            out["concurrency"][c] = row
        self.results["sweep"] = out

    def every_graph_used(self, service: Server, models_dir: Path) -> None:
        """One small request per graph of every served model, then the worker's RSS: the
        footprint when all sessions are open (they open on first use), beside the bar's
        figure, which is what the benchmark's mix of endpoints needs."""
        if self.rss is None:
            return
        image = [[0.5] * 28] * 28
        calls = 0
        for entry in load_manifest(models_dir).models:
            ds, name = entry.dataset, entry.name
            if name in ("ae", "vae", "vae2d", "cvae"):
                label = {"labels": [3]} if name == "cvae" else {}
                bodies = [("encode", {"images": [image], "model": name, "dataset": ds, **label}),
                          ("decode", {"latents": [[0.0] * entry.latent_dim], "model": name,
                                      "dataset": ds, **label})]
            elif name == "denoiser":
                bodies = [("denoise", {"images": [image], "dataset": ds})]
            else:
                factor = int(name.removeprefix("upscaler_x"))
                small = [[0.5] * (28 // factor)] * (28 // factor)
                bodies = [("upscale", {"images": [small], "factor": factor, "dataset": ds})]
            for path, body in bodies:
                _post(f"{service.url}/{path}", json.dumps(body).encode(), "application/json")
                calls += 1
        rss = self.rss.mark("every graph used once", self.service_requests + calls)
        self.results["meta"]["worker_rss_every_graph_mb"] = {
            "what": "worker RSS after the run, then one request to each graph of every model",
            "rss_mb": rss,
            "requests": calls,
        }
        log.info("worker RSS with every graph's session open: %.0f MB", rss)

    # ---------------------------------------------------------------- all

    def run(self) -> dict:
        started = time.time()
        models_dir = self.models_dir()
        self.results["meta"] = meta(self, models_dir)
        log.info(
            "models: %s; %d worker(s), %d onnxruntime threads",
            models_dir,
            self.workers,
            self.threads,
        )
        self.torch_vs_ort(models_dir)
        limit_before = self.inprocess_limit(models_dir)
        extra = dict(kv.split("=", 1) for kv in self.args.env)
        service = start_service(
            models_dir, self.workers, self.workdir, extra, root=Path(self.args.service_root)
        )
        baseline = None
        try:
            self.rss = RssSampler(service)
            service.rss = self.rss
            self.rss.mark("ready", 0)
            baseline_env = dict(kv.split("=", 1) for kv in self.args.baseline_env)
            baseline = start_baseline(models_dir, self.workers, self.workdir, baseline_env)
            self.results["figures"]["start_to_ready_s"] = {
                "what": "Popen of `bentoml serve` to the first GET /readyz = 200, seconds",
                "ratio": service.start_s,
                "baseline_s": baseline.start_s,
                "met": _meets("start_to_ready_s", service.start_s),
            }
            self.results["meta"]["same_answers_max_abs_diff"] = self.check_same_answers(
                service, baseline
            )
            self.binary_path(service, models_dir, limit_before)
            self.json_rounds(service, baseline)
            self.memory()
            self.every_graph_used(service, models_dir)
            if self.args.sweep:
                self.sweep(service, baseline, models_dir)
        finally:
            service.stop()
            if baseline is not None:
                baseline.stop()
            self.results["logs"] = {
                "service": str(service.log),
                "baseline": str(baseline.log) if baseline else None,
            }
        self.results["meta"]["wall_s"] = time.time() - started
        return self.results


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def meta(bench: Bench, models_dir: Path) -> dict:
    import bentoml
    import fastapi
    import onnxruntime
    import uvicorn

    busy = subprocess.run(["pgrep", "-af", "training train"], capture_output=True, text=True)
    return {
        "command": " ".join(["python", "-m", "benchmarks", *sys.argv[1:]]),
        "mode": "smoke" if bench.args.smoke else "full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": available_cores(),
            "os": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            "bentoml": bentoml.__version__,
            "onnxruntime": onnxruntime.__version__,
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "numpy": np.__version__,
        },
        "models_dir": str(models_dir),
        "service_root": bench.args.service_root,
        "service_env": bench.args.env,
        "baseline_env": bench.args.baseline_env,
        "dataset": bench.dataset,
        "workers": bench.workers,
        "onnxruntime_threads": bench.threads,
        "loadgen_cpu": loadgen_cpu(),
        "endpoints": {k: v[3] for k, v in ENDPOINTS.items()},
        "plan": bench.plan.__dict__,
        "training_running": busy.stdout.strip().splitlines(),
    }


# ------------------------------------------------------------------ report


def table(results: dict) -> str:
    """The figures as a Markdown table: measured values, ratio, bar, met."""
    f = results["figures"]
    lines = ["| figure | measured | ratio | bar | met |", "| --- | --- | --- | --- | --- |"]

    def row(name: str, label: str, measured: str, ratio: str) -> None:
        op, bar = BARS[name]
        met = "yes" if f[name]["met"] else "**no**"
        lines.append(f"| {label} | {measured} | {ratio} | {op} {bar:g} | {met} |")

    if "ort_vs_torch" in f:
        for r in f["ort_vs_torch"]["rows"]:
            ok = "yes" if r["ratio"] >= BARS["ort_vs_torch"][1] else "**no**"
            lines.append(
                f"| onnxruntime vs torch eager, {r['graph']}, batch {r['batch']} | "
                f"torch {r['torch_ms']:.2f} ms, ort {r['ort_ms']:.2f} ms | "
                f"{r['ratio']:.2f}x | >= 1 | {ok} |"
            )
    for key, label, unit in (
        ("binary_vs_inprocess", "binary .npy path vs in-process onnxruntime", "images/s"),
        ("json_batch_vs_baseline", "JSON batch (256) vs FastAPI baseline", "images/s"),
        ("single_rps_vs_baseline", "single-image JSON, c=32, vs baseline", "req/s"),
        ("single_p99_vs_baseline", "p99 latency, single image, c=32, vs baseline", "ms"),
    ):
        if key not in f:
            continue
        for endpoint, e in f[key]["endpoints"].items():
            if key == "binary_vs_inprocess":
                measured = (
                    f"{e['service_images_s']:,.0f} vs {e['inprocess_images_s']:,.0f} "
                    f"{unit}; p50 {e['latency_ms']['p50']:.1f} / p99 "
                    f"{e['latency_ms']['p99']:.1f} ms; {e['errors']} errors"
                )
            else:
                s, b = e["service"], e["baseline"]
                value = {"images/s": "images_s", "req/s": "rps", "ms": "p99_ms"}[unit]
                measured = (
                    f"{s[value]:,.1f} vs {b[value]:,.1f} {unit}; p50 {s['p50_ms']:.1f} "
                    f"vs {b['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} vs "
                    f"{b['p99_ms']:.1f} ms; errors {s['errors']} vs {b['errors']}; server CPU "
                    f"{s['server_cpu_ms_per_request']:.2f} vs "
                    f"{b['server_cpu_ms_per_request']:.2f} ms/request"
                )
            ok = _meets(key, e["ratio"])
            if key == "single_rps_vs_baseline":
                ok = ok and e["service"]["errors"] == 0
            op, bar = BARS[key]
            lines.append(
                f"| {label} ({endpoint}) | {measured} | {e['ratio']:.2f}x | "
                f"{op} {bar:g} | {'yes' if ok else '**no**'} |"
            )
    if "start_to_ready_s" in f:
        s = f["start_to_ready_s"]
        row(
            "start_to_ready_s",
            "process start to /readyz = 200",
            f"{s['ratio']:.2f} s (baseline {s['baseline_s']:.2f} s)",
            f"{s['ratio']:.2f} s",
        )
    if "worker_rss_mb" in f:
        m = f["worker_rss_mb"]
        row(
            "worker_rss_mb",
            f"worker RSS after {m['requests_served']:,} requests",
            f"{m['ratio']:.0f} MB (max {m['max_mb']:.0f}; growth {m['growth_mb']:+.1f} MB "
            f"since {m['growth_from']['requests']:,} requests; flat: {m['flat']})",
            f"{m['ratio']:.0f} MB",
        )
    every = results.get("meta", {}).get("worker_rss_every_graph_mb")
    if every:
        lines.append(f"\nWorker RSS once every graph of every model has been used (all sessions "
                     f"open; not the bar's figure): {every['rss_mb']:.0f} MB.")
    return "\n".join(lines)


def sweep_table(results: dict) -> str:
    """The sweep as two Markdown tables (batch size; concurrency)."""
    sweep = results["sweep"]
    lines = [
        "| images per request (encode, c=4) | service images/s | baseline images/s | "
        "in-process images/s | service p99 ms | baseline p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for batch in sorted(sweep["batch"], key=int):
        row = sweep["batch"][batch]
        s, b, i = row["service"], row["baseline"], row["inprocess"]
        lines.append(
            f"| {batch} | {s['images_s']:,.0f} | {b['images_s']:,.0f} | {i['images_s']:,.0f} | "
            f"{s['p99']:.1f} | {b['p99']:.1f} |"
        )
    lines += [
        "",
        "| concurrency (encode, 1 image) | service req/s | baseline req/s | service p50/p99 ms | "
        "baseline p50/p99 ms | errors (service/baseline) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in sorted(sweep["concurrency"], key=int):
        s, b = sweep["concurrency"][c]["service"], sweep["concurrency"][c]["baseline"]
        lines.append(
            f"| {c} | {s['rps']:,.0f} | {b['rps']:,.0f} | {s['p50']:.1f} / {s['p99']:.1f} | "
            f"{b['p50']:.1f} / {b['p99']:.1f} | {s['errors']} / {b['errors']} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["sweep"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    batches = sorted(int(k) for k in sweep["batch"])
    for name, style in (("service", "o-"), ("baseline", "s--"), ("inprocess", "^:")):
        a.plot(batches, [sweep["batch"][k][name]["images_s"] for k in batches], style, label=name)
    a.set(
        xscale="log",
        yscale="log",
        xlabel="images per JSON request (encode, c=4)",
        ylabel="images/s",
        title="throughput vs batch size",
    )
    conc = sorted(int(k) for k in sweep["concurrency"])
    for name, style in (("service", "o-"), ("baseline", "s--")):
        b.plot(conc, [sweep["concurrency"][k][name]["rps"] for k in conc], style, label=name)
        c.plot(conc, [sweep["concurrency"][k][name]["p99"] for k in conc], style, label=name)
    b.set(
        xscale="log",
        xlabel="concurrency (1 image per request)",
        ylabel="requests/s",
        title="single-image throughput",
    )
    c.set(
        xscale="log",
        yscale="log",
        xlabel="concurrency (1 image per request)",
        ylabel="p99 latency, ms",
        title="single-image p99 latency",
    )
    for ax in (a, b, c):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI")
    parser.add_argument("--out", type=Path, default=Path("results.json"), help="JSON figures")
    parser.add_argument("--models-dir", help="default: $AE_MODELS_DIR, else exported_models/")
    parser.add_argument("--runs-dir", default=str(REPO_ROOT / "runs"), help="checkpoints")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--workers", type=int, default=1, help="AE_WORKERS for both servers")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="AE_X=V",
        help="extra environment for the service (repeatable)",
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="X=V",
        help="extra environment for the baseline (repeatable)",
    )
    parser.add_argument(
        "--service-root",
        default=str(REPO_ROOT),
        help="run `bentoml serve` from this checkout instead (to measure a patched copy)",
    )
    parser.add_argument("--sweep", action="store_true", help="also sweep batch and concurrency")
    parser.add_argument("--plot", type=Path, help="PNG of the sweep")
    parser.add_argument("--single-requests", type=int, help="override the plan")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar is missed")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    args.models_dir_given = bool(args.models_dir or os.environ.get("AE_MODELS_DIR"))
    args.models_dir = (
        args.models_dir or os.environ.get("AE_MODELS_DIR") or str(REPO_ROOT / "exported_models")
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    plan = SMOKE if args.smoke else FULL
    if args.single_requests:
        from dataclasses import replace

        plan = replace(plan, single_requests=args.single_requests)
    workdir = Path(tempfile.mkdtemp(prefix="ae-bench-"))
    try:
        results = Bench(args, plan, workdir).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.plot and "sweep" in results:
        plot(results, args.plot)
    print()
    print(table(results))
    if "sweep" in results:
        print()
        print(sweep_table(results))
    print(f"\nfigures: {args.out}" + (f"; plot: {args.plot}" if args.plot else ""))
    missed = [k for k, v in results["figures"].items() if not v["met"]]
    if missed:
        print(f"bars missed: {', '.join(missed)}")
    return 1 if (missed and args.check) else 0
