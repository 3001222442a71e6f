"""One exception type for problems the user can fix; the CLI prints it as one line."""

from __future__ import annotations

import sys
from typing import Callable


INTERRUPTED = 130  # the exit status after Ctrl-C (128 + SIGINT)


class FastViTError(Exception):
    """Bad input: a file, key, shape or option the user supplied. The message is the whole story."""


def report_errors(fn: Callable[[], int | None], prog: str) -> int:
    """Run fn; a FastViTError becomes one line on stderr (exit 2), Ctrl-C exit 130, a closed pipe
    exit 141 (128 + SIGPIPE), never a traceback."""
    try:
        return fn() or 0
    except FastViTError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        import signal

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
