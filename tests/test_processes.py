"""Pool workers end when the process that owns the pool is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Argument: "started" kills the owner once its workers have run a task, "starting" right after they are
# spawned, while they still import (they begin their check already orphaned).
OWNER = """
import concurrent.futures as cf, multiprocessing, os, signal, sys
from converters.processes import exit_with_parent
pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
                              initargs=(os.getpid(),))
futures = [pool.submit(os.getpid) for _ in range(6)]
if sys.argv[1] == "started":
    pids = {f.result() for f in futures}
else:
    pids = set(pool._processes)
print(" ".join(map(str, sorted(pids))), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 or the out-of-memory killer would
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")  # zombies are gone


@pytest.mark.parametrize("when", ["started", "starting"])
def test_workers_exit_when_their_owner_is_killed(when: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, when], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env)
    workers = [int(p) for p in owner.stdout.readline().split()]  # orphans would hold the pipe: no read to EOF
    assert owner.wait(timeout=120) == -9 and workers
    deadline = time.time() + 15
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:  # do not leak them into the rest of the run if this fails
        os.kill(p, 9)
    assert not left, f"workers {left} outlived their killed owner"
