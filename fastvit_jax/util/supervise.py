"""Multi-process runs under a supervisor, so that a dead peer ends the others in one line.

When a process of a jax.distributed run dies, the survivors' coordination client notices the
missing heartbeats and aborts the process from a C++ thread (LOG(FATAL): a stack trace, SIGABRT),
which Python cannot catch. So the `fastvit` of each process runs its command in a child process and
watches it: the runtime's own log lines (glog format) go to a log file instead of the terminal, and
a child killed by a signal becomes one `fastvit: error:` line naming the cause and the log.
Heartbeats time out after HEARTBEAT_S (FASTVIT_HEARTBEAT_S), which bounds how long survivors wait.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile

CHILD_FLAG = "FASTVIT_SUPERVISED"
HEARTBEAT_S = 60
# glog's prefix: severity, date, time, thread, file:line]; and what follows a fatal one.
_GLOG = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^ ]+:\d+\]")
_DUMP = re.compile(rb"^(\*\*\* Check failure|\s+@\s+0x|Additional GRPC error information|:UNKNOWN:Error received)")


def needed() -> bool:
    """A multi-process run is described in the environment and this is not already the child."""
    multi = os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("FASTVIT_DISTRIBUTED") == "1"
    return bool(multi) and os.environ.get(CHILD_FLAG) != "1"


def heartbeat_s() -> int:
    return int(os.environ.get("FASTVIT_HEARTBEAT_S", HEARTBEAT_S))


def _die_with_parent() -> None:
    """The child is killed when its supervisor dies (Linux), so no orphan keeps a peer waiting. (SIGKILL:
    JAX takes SIGTERM as a preemption notice and carries on.)"""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _cause(log: bytes) -> str:
    if b"heartbeat" in log or b"stopped sending heartbeats" in log:
        return "another process of this run stopped (its heartbeats timed out)"
    if b"distributed service detected fatal errors" in log or b"coordination" in log.lower():
        return "the JAX distributed service reported a failed process"
    return "the process was stopped by a signal"


def run(argv: list[str], program: list[str] | None = None) -> int:
    """Run `fastvit argv` (or `program argv`) as a supervised child; its exit status, or 1 with one
    line if it was killed."""
    env = dict(os.environ, **{CHILD_FLAG: "1"})
    # kept open while the child runs, closed below
    log = tempfile.NamedTemporaryFile(prefix=f"fastvit-{os.environ.get('JAX_PROCESS_ID', 'p')}-",  # noqa: SIM115
                                      suffix=".log", delete=False)
    child = subprocess.Popen([*(program or [sys.executable, "-m", "fastvit_jax"]), *argv], stderr=subprocess.PIPE, env=env,
                             # no threads exist yet in this process: preexec_fn is safe here
                             preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # noqa: PLW1509
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child; it reports it
    pending, diverting, told, logged = b"", False, False, []
    try:
        while chunk := os.read(child.stderr.fileno(), 1 << 16):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                bar, _, line = line.rpartition(b"\r")  # a progress bar's redraws, then what follows them
                runtime = _GLOG.search(line)
                if runtime and runtime.start() > 0:  # a log line written right after a progress bar
                    bar, line = bar + b"\r" + line[:runtime.start()], line[runtime.start():]
                if bar and not diverting:
                    sys.stderr.buffer.write(bar + b"\r")
                if line.startswith(b"fastvit:") and not told:  # our own lines always reach the user
                    sys.stderr.buffer.write(line + b"\n")
                    told = line.startswith(b"fastvit: error:")  # after it, the runtime's epilogue is logged
                    diverting = diverting or told
                elif diverting or runtime or _DUMP.match(line):
                    # after a runtime error line, what follows is its continuation and stack trace
                    diverting = diverting or line[:1] in (b"E", b"F") and bool(_GLOG.match(line))
                    log.write(line + b"\n")
                    logged.append(line)
                else:
                    sys.stderr.buffer.write(line + b"\n")
            if pending and b"\r" in pending and not diverting:  # a progress bar's redraw: show it now
                head, _, pending = pending.rpartition(b"\r")
                sys.stderr.buffer.write(head + b"\r")
            sys.stderr.buffer.flush()
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        log.close()
    if pending:
        sys.stderr.buffer.write(pending)
    if code == 0 or told or (code > 0 and not diverting):  # the user has seen what happened
        if not logged:
            os.unlink(log.name)
        return code if code >= 0 else 1
    how = f"stopped: {_cause(b''.join(logged))}" if code < 0 else f"failed (exit {code})"
    print(f"fastvit: error: process {os.environ.get('JAX_PROCESS_ID', '?')} of "
          f"{os.environ.get('JAX_NUM_PROCESSES', '?')} {how}; rerun every process (runtime log: {log.name})",
          file=sys.stderr)
    return code if code > 0 else 1
