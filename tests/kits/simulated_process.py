"""The simulated Ollama server as a child process (``python -m actors.backends.simulated``),
for tests that kill the model server and start it again on the same port, as an operator's
Ollama restart does."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Self

__all__ = ["SimulatedProcess"]

EXIT_WAIT_S = 10.0  # bounds how long a broken child hangs a test, never a pause


class SimulatedProcess:
    """One simulated Ollama process at a time, on the port the first one got.

    ``args`` are the command line's (``--profile``, ``--speed``, ...); ``port`` 0 lets the
    first start pick a free port, which every restart then binds again.
    """

    def __init__(self, *args: str, port: int = 0) -> None:
        self.args = args
        self.port = port
        self.url = ""
        self._child: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def start(self) -> str:
        """Start the server and return its URL once it listens."""
        if self._child is not None:
            raise RuntimeError("the simulated server process is already running")
        if self._stderr is not None:
            self._stderr.close()
        # It lives as long as the process (closed by the next start or on exit).
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        command = [sys.executable, "-m", "actors.backends.simulated", "--port", str(self.port)]
        self._child = subprocess.Popen(
            [*command, *self.args], stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        assert self._child.stdout is not None
        line = self._child.stdout.readline().strip()  # the URL, or EOF if it exited
        if not line:
            code = self._child.wait(EXIT_WAIT_S)
            raise RuntimeError(f"the simulated server exited with {code}: {self.stderr()}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])
        return line

    def kill(self) -> int:
        """SIGKILL the server (nothing is cleaned up, as in a crash); its exit status."""
        return self._end(signal.SIGKILL)

    def terminate(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Ask the server to stop (SIGTERM or SIGINT); its exit status."""
        return self._end(signum)

    def restart(self) -> str:
        """Kill the server and start a new one on the same port; its URL."""
        self.kill()
        return self.start()

    def stderr(self) -> str:
        """What the current (or last) process wrote on stderr."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    @property
    def running(self) -> bool:
        """True while a started process has not been ended."""
        return self._child is not None

    def _end(self, signum: signal.Signals) -> int:
        child, self._child = self._child, None
        if child is None:
            raise RuntimeError("the simulated server process is not running")
        child.send_signal(signum)
        code = child.wait(EXIT_WAIT_S)
        assert child.stdout is not None
        child.stdout.close()
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._child is not None:
            self.kill()
        if self._stderr is not None:
            self._stderr.close()

    @classmethod
    def with_profiles(cls, profiles: Sequence[str], *more: str) -> SimulatedProcess:
        """A process with these ``--profile`` values (and ``more`` arguments)."""
        return cls(*(arg for profile in profiles for arg in ("--profile", profile)), *more)
