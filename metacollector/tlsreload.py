"""Re-read TLS files when they change on disk: certificate rotation without a restart.

A ``Reloaded`` holds the value built from some files (an ``ssl.SSLContext``) and, polled every
few seconds, rebuilds it when any file's identity changed: its resolved path, inode, size or
mtime. Resolving symlinks catches a Kubernetes Secret volume update, which writes a new
timestamped directory and atomically renames the ``..data`` symlink onto it (the files' own
paths never change). A build that fails (a half-written or corrupt file, a key that does not
match the certificate) keeps the previous value, logs why and is counted; the same broken files
are not retried until they change again. Open connections keep the context they were made with;
only new ones get the new value. Polling, not inotify: a Secret volume swap is a rename of a
directory entry that inotify on the files themselves does not report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

from metacollector import metrics

log = logging.getLogger("metacollector.tlsreload")

T = TypeVar("T")
DEFAULT_INTERVAL = 5.0  # seconds between polls; cert-manager renews days ahead of expiry

Fingerprint = tuple[tuple[str, int, int, int] | tuple[str, str], ...]


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """Each file's resolved path, inode, size and mtime (or why it cannot be read)."""
    out: list[tuple[str, int, int, int] | tuple[str, str]] = []
    for path in paths:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError as exc:
            out.append((real, exc.strerror or type(exc).__name__))
        else:
            out.append((real, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Reloaded(Generic[T]):
    """The current value built from ``paths`` by ``build``; calling the object returns it.

    ``build`` runs once here (its error is a startup error) and again after each change.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[str],
        build: Callable[[], T],
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.name = name
        self.paths = tuple(paths)
        self.build = build
        self.interval = interval
        self._seen = fingerprint(self.paths)
        self.value = build()
        self.reloads = 0  # successful rebuilds since start
        self.failures = 0  # rebuilds refused (the previous value kept)
        self._ok = metrics.TLS_RELOADS.labels(name, "ok")
        self._failed = metrics.TLS_RELOADS.labels(name, "failed")

    def __call__(self) -> T:
        return self.value

    def check(self) -> bool:
        """Rebuild if the files changed since the last look; True when the value was swapped."""
        now = fingerprint(self.paths)
        if now == self._seen:
            return False
        self._seen = now
        try:
            value = self.build()
        except Exception as exc:  # any failure keeps the working value
            self.failures += 1
            self._failed.inc()
            log.warning(
                "tls files changed but cannot be loaded; keeping the previous ones",
                extra={"kind": self.name, "error": str(exc)[:300], "files": list(self.paths)},
            )
            return False
        self.value = value
        self.reloads += 1
        self._ok.inc()
        log.info("tls files reloaded", extra={"kind": self.name, "files": list(self.paths)})
        return True

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await trio.sleep(self.interval)
            self.check()
