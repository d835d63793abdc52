"""Start, watch and stop the two servers under test: the service and the FastAPI baseline.

The service starts exactly as the README says (`bentoml serve` from the
repository root, configured by `AE_*` variables); the baseline under uvicorn
with the same number of workers. Each start is timed from `Popen` to the first
`GET /readyz` answered 200. `RssSampler` reads the resident memory of the
serving worker processes from `/proc` while load runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running server process (group) and what was measured while it started."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path
    start_s: float = float("nan")
    worker_match: str = ""  # substring of the worker processes' command lines
    rss: RssSampler | None = field(default=None, repr=False)

    def workers(self) -> list[int]:
        """Pids of the processes that serve requests."""
        tree = [self.process.pid, *descendants(self.process.pid)]
        if not self.worker_match:
            return tree[:1] if len(tree) == 1 else tree[1:]
        return [p for p in tree if self.worker_match in cmdline(p)]

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the whole process tree."""
        return sum(cpu_s(p) for p in [self.process.pid, *descendants(self.process.pid)])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        if self.rss is not None:
            self.rss.stop()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _start(
    name: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    log: Path,
    timeout: float,
    cwd: Path = REPO_ROOT,
) -> Server:
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches every worker
        )
    server = Server(name, url, process, log)
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start:\n{log.read_text()[-3000:]}")
        if _ready(url):
            server.start_s = time.perf_counter() - started
            return server
        time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"{name} not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _environ(models_dir: Path, workers: int, workdir: Path, extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE_")}
    env.update(
        {
            "AE_MODELS_DIR": str(models_dir),
            "AE_WORKERS": str(workers),
            "BENTOML_HOME": str(workdir / "bentoml_home"),
            "BENTOML_DO_NOT_TRACK": "True",
            **extra,
        }
    )
    return env


def start_service(
    models_dir: Path,
    workers: int,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    timeout: float = 120,
    root: Path = REPO_ROOT,
) -> Server:
    """`bentoml serve` from the repository root (the README's command) on a free port.

    `root` may name another checkout (say a patched copy) to measure a change.
    """
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = _environ(models_dir, workers, workdir, extra_env or {})
    log = workdir / f"service-{port}.log"
    server = _start("service", command, env, port, log, timeout, cwd=Path(root))
    server.worker_match = "_bentoml_impl.worker"
    return server


def start_baseline(
    models_dir: Path,
    workers: int,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Server:
    """The FastAPI baseline under uvicorn, same worker count, on a free port."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.baseline:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = _environ(models_dir, workers, workdir, extra_env or {})
    return _start("baseline", command, env, port, workdir / f"baseline-{port}.log", timeout)


# ------------------------------------------------------------------ /proc


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (VmRSS), NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class RssSampler:
    """Samples the RSS of a server's workers every `interval` s in a background thread."""

    def __init__(self, server: Server, interval: float = 0.25):
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB of the largest)
        self.marks: list[tuple[str, float, int]] = []  # (label, seconds, requests so far)
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def now(self) -> float:
        """The largest worker RSS right now, MB."""
        sizes = [rss_mb(p) for p in self.server.workers()]
        return max((s for s in sizes if s == s), default=float("nan"))

    def mark(self, label: str, requests: int) -> float:
        """Record the RSS now, with how many requests the server has served; return it."""
        value = self.now()
        self.marks.append((label, value, requests))
        return value

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter() - self._t0, self.now()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
