"""Interrupts end every command in one line with exit 130 and leave resumable state; calibration
resumes to the same plan; convert never replaces what exists and never leaves half a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TINY, google_checkpoint, interrupt_on_call, labelled_images
from fastvit_jax.search import calibrate
from fastvit_jax.cli import main
from fastvit_jax.checkpoints.registry import asset_path


def _tiny_setup(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, **google_checkpoint(TINY, seed=5))
    return path, labelled_images(tmp_path / "data", size=(32, 32))


def test_interrupted_calibration_resumes_to_the_same_plan(tmp_path, capsys, monkeypatch):
    path, data = _tiny_setup(tmp_path)
    from fastvit_jax.merge.flops import gflops

    target = f"{0.6 * gflops(TINY, None):.6f}"
    argv = lambda out: [str(a) for a in ["plan", "--checkpoint", path, "--gelu", "tanh", "--preprocessing",
                                          "inception", "--method", "atm", "--calibrate", data, "--thresholds",
                                          "0.3,0.02,-1.0", "--target-gflops", target, "--out", out]]
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "clean"))
    assert main(argv(tmp_path / "whole.json")) == 0, capsys.readouterr().err
    capsys.readouterr()

    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    # the floor's fit, the first bisection step, then Ctrl-C
    real = interrupt_on_call(monkeypatch, calibrate, "calibrate_schedule", 3)
    assert main(argv(tmp_path / "resumed.json")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "fastvit: interrupted"
    assert not (tmp_path / "resumed.json").exists()
    monkeypatch.setattr(calibrate, "calibrate_schedule", real)
    assert main(argv(tmp_path / "resumed.json")) == 0
    assert "resumed an interrupted calibration: 2 of its" in capsys.readouterr().err
    whole, resumed = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "resumed.json"))
    for key in ("options", "plan", "gflops", "calibration"):
        assert whole[key] == resumed[key], key
    # every other setting is another search, in another journal
    images, options = np.zeros((2, 32, 32, 3), np.float32), calibrate.MergeOptions("atm")
    names = {calibrate.journal_file(TINY, {"w": np.ones(3)}, images, options, settings, tmp_path).name
             for settings in ({"quantile": 0.5}, {"quantile": 0.25})}
    names.add(calibrate.journal_file(TINY, {"w": np.ones(3)}, images + 1, options, {"quantile": 0.5}, tmp_path).name)
    names.add(calibrate.journal_file(TINY, {"w": np.zeros(3)}, images, options, {"quantile": 0.5}, tmp_path).name)
    assert len(names) == 4


def catches_sigint(pid: int, timeout: float = 60.0) -> None:
    """Wait until the process has its SIGINT handler (Python installs it while starting; before that,
    on a loaded machine, the default action would end the process, as for any program)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = open(f"/proc/{pid}/status").read()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never took over SIGINT")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigint_during_calibration_always_exits_130(tmp_path):
    """Ctrl-C at several points (importing, loading, compiling, evaluating): one line, exit 130, never a
    signal death (it once ended in a segmentation fault at the interpreter's teardown)."""
    env = dict(os.environ, FASTVIT_CACHE=str(tmp_path / "cache"), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"))
    cmd = [sys.executable, "-m", "fastvit_jax", "plan", "--method", "atm", "--calibrate", str(asset_path("images")),
           "--calibration-images", "8", "--target-gflops", "0.7352"]
    # A shell's background job and pytest-xdist's workers start children with SIGINT ignored; a
    # terminal's Ctrl-C reaches a process with the default handler, so the child gets that back.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    for delay in (0.3, 3.0, 8.0, 12.0):  # seconds after Python took over SIGINT (our entry: ms later)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=default_sigint)
        catches_sigint(proc.pid)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 130, (delay, proc.returncode, lines[-3:])
        assert lines[-1] == "fastvit: interrupted", (delay, lines[-3:])


class _SwallowsCtrlC:
    """A finaliser that Ctrl-C interrupts: Python prints "Exception ignored in ..." and carries on."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("hook", [True, False])
def test_ctrl_c_that_python_swallows_still_ends_the_command(capsys, monkeypatch, hook):
    """Once armed, an interrupt raised inside a finaliser is raised again in normal code (the
    unraisable hook); should that not happen, a command that returns normally after a Ctrl-C is
    still reported as interrupted."""
    from fastvit_jax import errors

    interrupts = errors.Interrupts()
    monkeypatch.setattr(errors, "INTERRUPTS", interrupts)
    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupts.install()
        if not hook:
            sys.unraisablehook = lambda unraisable: None  # swallowed for good
        interrupts.arm()
        steps = []

        def command():
            _SwallowsCtrlC()  # dropped at once: the interrupt is raised and swallowed here
            for _ in range(200):
                steps.append(1)
                time.sleep(0.005)
            return 0

        assert errors.report_errors(command, "fastvit") == errors.INTERRUPTED
        assert capsys.readouterr().err.strip().splitlines()[-1] == "fastvit: interrupted"
        assert (len(steps) < 200) == hook, len(steps)  # the hook ends it early; without it, the fallback at the end
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = sys.__unraisablehook__


def test_ctrl_c_during_the_imports_is_honoured_once_they_finish(capsys, monkeypatch):
    from fastvit_jax import errors

    interrupts = errors.Interrupts()
    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupts.install()
        signal.raise_signal(signal.SIGINT)  # before arm(): remembered, nothing raised
        assert interrupts.received
        with pytest.raises(KeyboardInterrupt):
            interrupts.arm()
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = sys.__unraisablehook__


def test_convert_refuses_an_existing_output_and_unknown_extensions(tmp_path, capsys):
    src = tmp_path / "m.npz"
    np.savez(src, **google_checkpoint(TINY, seed=1))
    existing = tmp_path / "x.txt"
    existing.write_text("keep me")
    for dst, words in ((existing, "not '.txt'"), (tmp_path / "notes.txt", "not '.txt'"),
                       (tmp_path / "out.orbax", None)):
        code = main(["convert", str(src), str(dst)])
        err = capsys.readouterr().err
        if words is None:
            assert code == 0 and dst.is_dir(), err
        else:
            assert code == 2 and err.count("\n") == 1 and words in err and "OUT.npz" in err, err
    assert existing.read_text() == "keep me"
    out = tmp_path / "out.npz"
    assert main(["convert", str(src), str(out)]) == 0
    before = out.read_bytes()
    assert main(["convert", str(tmp_path / "m.npz"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and err.count("\n") == 1 and out.read_bytes() == before
    assert main(["convert", str(src), str(tmp_path / "out.orbax")]) == 2  # a folder is refused the same way
    assert "a folder of that name exists" in capsys.readouterr().err
    assert main(["convert", str(src), str(out), "--overwrite"]) == 0
    assert main(["convert", str(src), str(tmp_path / "out.orbax"), "--overwrite"]) == 0
    assert main(["convert", str(src), str(tmp_path / "o.npz"), "--format", "orbax"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_a_killed_save_leaves_no_output(tmp_path, monkeypatch):
    from fastvit_jax.checkpoints import checkpoint

    params = {"w": np.ones((4, 4), np.float32)}
    real = np.savez

    def killed(*a, **kw):
        raise KeyboardInterrupt  # the process stopped mid-write

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_npz(params, tmp_path / "a.npz")
    monkeypatch.setattr(np, "savez", real)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a.npz").write_bytes(b"old")
    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_npz(params, tmp_path / "a.npz")
    assert (tmp_path / "a.npz").read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1
