"""Run a script as two real distributed processes (torch gloo on the CPU), for the tests of
integrations that must record on the main process only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def run_two_ranks(script: Path, *args: object, timeout: float = 120) -> list[str]:
    """Run ``script ARGS`` as ranks 0 and 1 of one job; each rank's output, after both exit 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join(sys.path),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *map(str, args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs
