"""Stopping the processes a benchmark started (a service, a worker, a sandbox), the same way in every script."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, so that it drains and says its last; killed if it has not ended within 30 s.

    SIGCONT first: a benchmark may have frozen it (SIGSTOP) to read what it holds.
    """
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
