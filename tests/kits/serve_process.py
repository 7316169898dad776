"""``gpulane serve`` as a child process, for tests of what a service manager sees: its
health routes, its signals (SIGTERM, SIGHUP) and its exit status."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from actors.testing import wait_until

__all__ = ["ServeProcess", "free_port"]

START_S = 60.0  # bounds how long a broken child hangs a test, never a pause
EXIT_S = 30.0


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServeProcess:
    """``python -m actors.cli serve --config CONFIG --port PORT [args]``; its log (stderr)
    is read by a thread as it comes, so the child never blocks on a full pipe."""

    def __init__(self, config: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "actors.cli", "serve", "--config", str(config)]
        self._command = [*command, "--port", str(self.port), *args]
        self._child: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> Self:
        """Start the child and return once ``/healthz`` answers."""
        self._child = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, name="serve-log-reader")
        self._reader.start()
        try:
            wait_until(
                lambda: self.answers("/healthz") or self._child_exited(), START_S, "not listening"
            )
            if self._child_exited():
                raise RuntimeError(f"gpulane serve exited at once:\n{self.log()}")
        except BaseException:
            self.close()
            raise
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._child is not None
        return self._child.pid

    def get(self, path: str, **options: Any) -> httpx.Response:
        """GET ``path`` on the gateway."""
        return httpx.get(self.url + path, timeout=10, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        """POST to ``path`` on the gateway."""
        return httpx.post(self.url + path, timeout=10, **options)

    def answers(self, path: str, status: int = 200) -> bool:
        """Whether GET ``path`` answers ``status`` now (False if nothing listens)."""
        try:
            return self.get(path).status_code == status
        except httpx.HTTPError:
            return False

    def send(self, signum: signal.Signals) -> None:
        """Send the child a signal."""
        assert self._child is not None
        self._child.send_signal(signum)

    def wait(self, timeout: float = EXIT_S) -> int:
        """The child's exit status, once it has exited on its own."""
        assert self._child is not None
        status = self._child.wait(timeout)
        if self._reader is not None:
            self._reader.join()
        return status

    def log(self) -> str:
        """What the child has logged so far."""
        return "".join(self._lines)

    def _child_exited(self) -> bool:
        return self._child is not None and self._child.poll() is not None

    def _read(self) -> None:
        assert self._child is not None and self._child.stderr is not None
        for line in self._child.stderr:
            self._lines.append(line)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop a child still running (SIGKILL if SIGTERM is not enough)."""
        child = self._child
        if child is None:
            return
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(EXIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
        self.wait()
