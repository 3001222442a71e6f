"""One exception type for problems the user can fix; the CLI prints it as one line."""

from __future__ import annotations

import signal
import sys
from typing import Callable


INTERRUPTED = 130  # the exit status after Ctrl-C (128 + SIGINT)


class FastViTError(Exception):
    """Bad input: a file, key, shape or option the user supplied. The message is the whole story."""


class Interrupts:
    """The command line's Ctrl-C. Until `arm()` (while the imports run) an interrupt is only
    remembered: raised there, it can land in a library's callback. Armed, it raises KeyboardInterrupt;
    should that land where Python only prints it and carries on (a finaliser, a weakref or gc
    callback: "Exception ignored in ..."), it is raised again at once, and a command that still
    returns normally after one is reported as interrupted."""

    def __init__(self):
        self.received = self.armed = False

    def handle(self, signum, frame) -> None:
        self.received = True
        if self.armed:
            raise KeyboardInterrupt

    def arm(self) -> None:
        """Raise from now on, the one remembered during the imports first."""
        self.armed = True
        if self.received:
            raise KeyboardInterrupt

    def swallowed(self, unraisable) -> None:  # sys.unraisablehook
        if self.armed and isinstance(unraisable.exc_value, KeyboardInterrupt):
            # raised again from another thread: here, in the hook, it would be swallowed once more
            import _thread
            import threading

            threading.Timer(0.01, _thread.interrupt_main, (signal.SIGINT,)).start()
            return
        sys.__unraisablehook__(unraisable)

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        sys.unraisablehook = self.swallowed


INTERRUPTS = Interrupts()


def report_errors(fn: Callable[[], int | None], prog: str) -> int:
    """Run fn; a FastViTError becomes one line on stderr (exit 2), Ctrl-C exit 130, a closed pipe
    exit 141 (128 + SIGPIPE), never a traceback."""
    try:
        code = fn() or 0
        if INTERRUPTS.received:  # raised where Python swallowed it, and the command carried on
            raise KeyboardInterrupt
        return code
    except FastViTError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the way out
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader left (`fastvit models | head`): stop quietly, as a C tool would
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141



def exit_process(code: int) -> None:
    """Leave the process with `code`. After an interrupt, skip the interpreter's teardown: XLA's
    threads (a compile, a running computation, the compilation cache) may still be running, and
    destroying the runtime under them crashed the process (a segmentation fault after the
    `interrupted` line). Every resumable state is already on disk, written by rename."""
    if code != INTERRUPTED:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    import os

    os._exit(code)
