"""Loaded by the collector that bench/memory.py starts (PYTHONPATH): traces allocations from
the first import, and on SIGUSR1 writes a tracemalloc snapshot to $MEMPROBE_DIR/snapN.pickle
(then an empty doneN file). Never on the path of `metacollector run` otherwise."""

import os

if os.environ.get("MEMPROBE_DIR"):
    import signal
    import tracemalloc

    tracemalloc.start(int(os.environ.get("MEMPROBE_FRAMES", "1")))
    _taken = [0]

    def _snapshot(signum: int, frame: object) -> None:
        _taken[0] += 1
        out = os.environ["MEMPROBE_DIR"]
        tracemalloc.take_snapshot().dump(f"{out}/snap{_taken[0]}.pickle")
        open(f"{out}/done{_taken[0]}", "w").close()

    signal.signal(signal.SIGUSR1, _snapshot)
