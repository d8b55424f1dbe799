"""Measuring tools of the benchmark: device synchronisation, wall-clock timing, peak memory, and a description of
the machine the numbers come from."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover - psutil missing
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so an RSS peak belongs to the block being measured."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class PeakMemory:
    """Peak memory during a block: CUDA -> max_memory_allocated; CPU -> process RSS polled by a thread (after
    ``malloc_trim`` so memory freed by earlier blocks does not count)."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _malloc_trim()
            self.peak = rss()
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, rss())
        return False


def timeit(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
           clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed by ``clock`` between device syncs;
    returns the ``repeats`` durations in seconds, in call order."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        sync(device)
        t = clock()
        fn()
        sync(device)
        out.append(clock() - t)
    return out


def median(ts: list[float]) -> float:
    """The median of ``ts`` as a float (the mean of the two middle values for an even count)."""
    return float(statistics.median(ts))


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    msg = str(e).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return device.type


def machine_info(device: torch.device) -> dict:
    import sklearn

    info = {"device": str(device), "slug": device_slug(device), "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def write_result(result: dict, paths, write_markdown) -> None:
    """Write a benchmark's numbers to ``paths[0]`` (JSON, every measurement) and its report to ``paths[1]``
    (Markdown, through ``write_markdown(result, path)``)."""
    paths[0].write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_markdown(result, paths[1])


def base_parser(prog: str, doc: str, *, device_help: str, smoke_help: str) -> argparse.ArgumentParser:
    """The command line every benchmark shares: ``--device``, ``--smoke`` and ``--out`` (default reports/bench), with
    the module docstring ``doc`` as its description."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help=device_help)
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    ap.add_argument("--out", default="reports/bench", help="output folder (default reports/bench)")
    return ap
