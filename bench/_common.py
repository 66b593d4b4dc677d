"""What the bench scripts share: the emulator as a child process, /proc readers, and the result
(printed as a table, written as JSON under bench/results/). Bench scripts import this as
``_common`` (they run as ``python bench/<script>.py``); they never import tests/."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import trio

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"


def emulator_command(
    port: int,
    kubeconfig: pathlib.Path,
    nodes: int,
    pods_per_node: int,
    *extra: str,
    token: str | None = None,
    plain_http: bool = True,
) -> list[str]:
    """The argv of `metacollector emulator` with a generated cluster, listening on 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "metacollector.cli",
        "emulator",
        f"--listen=127.0.0.1:{port}",
        f"--write-kubeconfig={kubeconfig}",
        f"--nodes={nodes}",
        f"--pods-per-node={pods_per_node}",
        *([f"--token={token}"] if token else []),
        *(["--plain-http"] if plain_http else []),
        *extra,
    ]


def start_emulator(command: list[str]) -> subprocess.Popen[str]:
    """Start the emulator and return once it listens (it prints one line then)."""
    emulator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert emulator.stdout is not None
    if not emulator.stdout.readline():
        sys.exit("emulator did not start")
    print(f"emulator pid {emulator.pid}", file=sys.stderr, flush=True)
    return emulator


def stop(*procs: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """Terminate each process still running; kill it if it outlives ``timeout``."""
    for proc in procs:
        if proc is None or proc.poll() is not None:
            continue
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- /proc --------------------------------------------------------------------------------------
def _tick() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far; 0 once it is gone."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _tick()


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident set size now and at its peak (VmRSS, VmHWM) of process ``pid``, in MiB."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024,
    }


def proc_stats(pid: int) -> dict[str, float]:
    """Memory (MiB) and CPU seconds of process ``pid``."""
    return {**memory_mb(pid), "cpu_s": cpu_seconds(pid)}


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far (from /proc/stat), to see other load."""
    ticks = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _tick()  # minus idle, iowait


# --- results ------------------------------------------------------------------------------------
def report(result: dict[str, Any], out: str | pathlib.Path) -> None:
    """Print ``result`` as a two-column table and write it as JSON to ``out`` (a name under
    bench/results/, or a path)."""
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    path = pathlib.Path(out)
    if path.parent == pathlib.Path("."):
        path = RESULTS / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


class LongestStep(trio.abc.Instrument):
    """The longest single task step (run between two checkpoints), and whose."""

    def __init__(self) -> None:
        self.started: float | None = None  # None: the step began before the instrument
        self.longest = 0.0
        self.task = ""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.started is not None:
            step = time.perf_counter() - self.started
            if step > self.longest:
                self.longest, self.task = step, task.name
        self.started = None
