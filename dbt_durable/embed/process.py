"""Start the local endpoint in a child process (the demo, the tests and the benchmark do)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

START_TIMEOUT_S = 60.0


class LocalEndpoint:
    """``python -m dbt_durable.embed`` on 127.0.0.1 and a free port, as a context manager.

    ``base_url`` is the OpenAI-style base (``http://127.0.0.1:PORT/v1``). The child outlives
    any runner process a test kills, so it counts every request the pipeline sent.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> LocalEndpoint:
        """Start the child and wait until it accepts connections (or raise ``RuntimeError``)."""
        cmd = [sys.executable, "-m", "dbt_durable.embed", "--host", self.host, "--port", str(self.port)]
        env = dict(os.environ)
        env.pop("DBT_DURABLE_FAULT", None)
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self._proc.stdout is not None
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if line.startswith("listening on "):
                self.base_url = line.split(" ", 2)[2].strip()
                return self
            if not line and self._proc.poll() is not None:
                break
        err = self._proc.stderr.read() if self._proc.stderr and self._proc.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"the embeddings endpoint did not start: {err[-2000:]}")

    def requests(self) -> list[dict[str, Any]]:
        """Every embeddings request received so far: ``{"key", "inputs", "status"}``, in order."""
        import httpx

        entries: list[dict[str, Any]] = httpx.get(f"{self.base_url}/requests", timeout=30).json()["requests"]
        return entries

    def clear(self) -> None:
        """Forget the requests recorded so far."""
        import httpx

        httpx.delete(f"{self.base_url}/requests", timeout=30)

    def stop(self) -> None:
        """Stop the child (it holds no state worth keeping)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalEndpoint:
        return self.start() if self._proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
