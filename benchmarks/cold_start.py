"""Benchmark: how soon each command says something, and how soon it is done (whole processes, cold).

Run: .venv/bin/python benchmarks/cold_start.py [--runs 1] [--repo DIR]

Times `sdlora --help`, `inspect`, `verify --base embedded`, `train --dry-run` (the sample data, embedded
base), `generate` (embedded, 32 x 32, 20 steps) and `webui` (until it answers HTTP on loopback), each as a
fresh process: seconds to its first line of output (stdout or stderr) and to the end (for webui: to the
first HTTP answer), the process's CPU seconds (user + system: on a loaded machine a steadier figure than
the wall time) and the load average beside. `--repo` times another checkout of sdlora (e.g. main before a
change), so that before and after run in one session on the same machine load. Targets (issue 25, two idle cores): first line <= 1 s,
`train --dry-run` and `verify --base embedded` <= 5 s, that `generate` <= 8 s, `webui` answering <= 15 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LORA = REPO / "tests" / "fixtures" / "wild_loras" / "cloneofsimo_sd15_r4_f16.safetensors"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_process(argv: list[str], cwd: Path, repo: Path, until_http: str | None = None, limit: float = 600.0):
    """(seconds to the first output line, seconds to the end or to an HTTP answer, CPU seconds, exit code or
    None)."""
    before = _children_cpu()
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sdlora", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    selector = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        selector.register(stream, selectors.EVENT_READ)
    first = end = None
    while time.perf_counter() - start < limit:
        for key, _ in selector.select(timeout=0.05):
            data = key.fileobj.read()
            if data and first is None:
                first = time.perf_counter() - start
            if data == b"":
                selector.unregister(key.fileobj)
        if until_http and _answers(until_http):
            end = time.perf_counter() - start
            break
        if proc.poll() is not None and not selector.get_map():
            end = time.perf_counter() - start
            break
    code = proc.poll()
    if until_http or code is None:  # webui serves until stopped; a command past `limit` is stopped too
        proc.terminate()
    proc.wait(30)  # reaped, so that its CPU time is counted
    return first, end, _children_cpu() - before, code


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return reply.status == 200
    except OSError:
        return False


def commands(tmp: Path) -> list[tuple[str, list[str], str | None]]:
    port = free_port()
    return [
        ("--help", ["--help"], None),
        ("inspect", ["inspect", str(LORA)], None),
        ("verify --base embedded", ["verify", str(LORA), "--base", "embedded"], None),
        ("train --dry-run", ["train", "--data", str(REPO / "sample_data"), "--base", "embedded",
                             "--output", str(tmp / "runs"), "--dry-run"], None),
        ("generate 32 px 20 steps", ["generate", "--prompt", "a red circle", "--width", "32", "--height", "32",
                                     "--steps", "20", "--out", str(tmp / "out.png")], None),
        ("webui (until HTTP answers)", ["webui", "--port", str(port), "--lora-dir", str(tmp / "loras"),
                                        "--output-dir", str(tmp / "outputs")], f"http://127.0.0.1:{port}/"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs of each command (the fastest is shown)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the sdlora checkout to time (default: this one)")
    args = parser.parse_args()
    print(f"{args.repo}: load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"cores: {os.cpu_count()}")
    print("| command | first line s | done s | CPU s | exit | load (1 min) |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv, url in commands(Path(tmp)):
            best = None
            for _ in range(args.runs):
                result = timed_process(argv, Path(tmp), args.repo.resolve(), url)
                if best is None or (result[1] or 1e9) < (best[1] or 1e9):
                    best = result
            first, end, cpu, code = best
            print(f"| {label} | {_fmt(first)} | {_fmt(end)} | {_fmt(cpu)} | {code if code is not None else '-'} | "
                  f"{os.getloadavg()[0]:.2f} |", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
