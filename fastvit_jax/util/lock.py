"""One writer per output: `sweep`, `tune` and `train` hold an exclusive lock on their output folder,
downloads on the file they write.

The lock is fcntl.flock on a `.lock` file beside the output, holding the owner's pid, host and
command: the kernel releases it when the process exits however it dies, so a stale lock file never
blocks anyone (the next writer simply takes it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from fastvit_jax.errors import FastViTError

LOCK_NAME = ".fastvit.lock"


def _owner(handle) -> str:
    handle.seek(0)
    text = handle.read().strip()
    return text or "another process"


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, *, folder: bool, what: str = "--out", wait_s: float = 0.0,
              remove: bool = False):
    """Hold the lock of `target` (a folder: its LOCK_NAME inside; a file: `<file>.lock` beside it) for
    the block. Another holder: wait up to wait_s seconds, then one FastViTError naming it.
    remove: delete the lock file on leaving (a download's: whoever waited on it finds the file done)."""
    target = Path(target)
    path = target / LOCK_NAME if folder else target.with_name(target.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held across the yield; closed in finally)
    held = False
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FastViTError(f"{target} is being written by {_owner(handle)}; wait for it to finish "
                                       f"or choose another {what}") from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        command = " ".join(["fastvit", *sys.argv[1:3]]) if sys.argv else "fastvit"
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({command})\n")
        handle.flush()
        yield
    finally:
        if held and remove:
            path.unlink(missing_ok=True)
        handle.close()  # closing releases the flock
