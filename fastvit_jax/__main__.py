"""`python -m fastvit_jax ...` is `fastvit ...` (the console script calls `entry`)."""

import signal
import sys
from fastvit_jax.errors import INTERRUPTED, exit_process


def entry() -> None:
    """Import the command line and run it; Ctrl-C at any point, imports included, ends in one line
    and exit 130. During the imports (a few seconds) an interrupt is only remembered and honoured
    once they finish: raised there, it can land in a library's callback, where Python prints a
    traceback and carries on."""

    interrupted = []

    def remember(signum, frame):
        interrupted.append(signum)

    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not when started with SIGINT ignored
    if ours:
        signal.signal(signal.SIGINT, remember)
    try:
        from fastvit_jax.cli import main
        if interrupted:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("fastvit: interrupted", file=sys.stderr)
        exit_process(INTERRUPTED)
    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    exit_process(main())


if __name__ == "__main__":
    entry()
