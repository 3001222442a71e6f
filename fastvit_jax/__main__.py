"""`python -m fastvit_jax ...` is `fastvit ...` (the console script calls `entry`)."""

import signal
import sys
from fastvit_jax.errors import INTERRUPTED, INTERRUPTS, exit_process


def entry() -> None:
    """Import the command line and run it; Ctrl-C at any point, imports included, ends in one line
    and exit 130 (`errors.Interrupts` says how)."""
    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not when started with SIGINT ignored
    if ours:
        INTERRUPTS.install()
    try:
        from fastvit_jax.cli import main
        if ours:
            INTERRUPTS.arm()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("fastvit: interrupted", file=sys.stderr)
        exit_process(INTERRUPTED)
    exit_process(main())


if __name__ == "__main__":
    entry()
