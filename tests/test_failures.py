"""Partial failure: one writer per output, dead peers, non-finite weights and logits, out of memory."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import TINY, google_checkpoint
from PIL import Image

from fastvit_jax.util import lock
from fastvit_jax.cli import main
from fastvit_jax.errors import FastViTError

DESCRIBED = ["--gelu", "tanh", "--preprocessing", "inception"]


def _images(folder, n, size=36, classes=3):
    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"c{i % classes}" / f"{i}.png")
    return folder


@pytest.fixture
def tiny_files(tmp_path):
    np.savez(tmp_path / "m.npz", **google_checkpoint(TINY))
    return tmp_path / "m.npz", _images(tmp_path / "data", 6)


# ---------------------------------------------------------------- one writer per output
HOLD = ("import sys, time\nfrom fastvit_jax.util.lock import exclusive\n"
        "with exclusive(sys.argv[1], folder=True):\n    print('held', flush=True)\n    time.sleep(600)\n")


def test_a_second_sweep_into_the_same_out_is_refused_and_a_dead_holder_does_not_block(tiny_files, tmp_path, capsys):
    ckpt, data = tiny_files
    argv = ["sweep", "--checkpoint", str(ckpt), "--data", str(data), "--methods", "tome", "--r", "0,2",
            "--bench-runs", "1", "--batch-size", "2", "--json", *DESCRIBED]
    assert main([*argv, "--out", str(tmp_path / "lone")]) == 0
    capsys.readouterr()
    out = tmp_path / "s"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"pid {holder.pid}" in err and str(out) in err, err
        assert not (out / "results.jsonl").exists()
    finally:
        holder.kill()  # dies holding the lock: the lock file stays, the kernel's lock does not
        holder.wait()
    assert (out / lock.LOCK_NAME).exists()
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]
    rows = lambda folder: [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert strip(rows(out)) == strip(rows(tmp_path / "lone"))


def test_tune_and_train_hold_their_outputs(tmp_path):
    from fastvit_jax.studies import train as train_mod
    from fastvit_jax.search import tune as tune_mod

    out = tmp_path / "plan.json"
    with lock.exclusive(tmp_path / "plan.json.tune", folder=True), \
            pytest.raises(FastViTError, match=f"plan.json.tune is being written by pid {os.getpid()}"):
        tune_mod.tune(TINY, None, None, None, target_gflops=1.0, out=out, methods=["tome"])
    with lock.exclusive(tmp_path / "w.npz.state", folder=True), \
            pytest.raises(FastViTError, match="w.npz.state is being written by pid"):
        train_mod.train(TINY, None, None, None, train_mod.TrainConfig(), tmp_path / "w.npz")


def test_a_second_download_waits_for_the_first(tmp_path, monkeypatch):
    """Processes of one run fetch the same file: the second waits for the lock, then finds the file."""
    from fastvit_jax.checkpoints import sources

    dest = tmp_path / "cache" / "S_16.npz"
    dest.parent.mkdir()
    fetched = []
    monkeypatch.setattr(sources, "_download", lambda url, d, progress: fetched.append(url) or d)

    def first():
        with lock.exclusive(dest, folder=False):
            time.sleep(1.0)
            dest.write_bytes(b"done")

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.2)
    assert sources.download("http://127.0.0.1:9/S_16.npz", dest) == dest
    t.join()
    assert dest.read_bytes() == b"done" and fetched == []  # found complete, not fetched again


# ---------------------------------------------------------------- non-finite
def test_nan_weight_is_refused_naming_the_parameter(tiny_files, tmp_path, capsys):
    _, data = tiny_files
    flat = google_checkpoint(TINY)
    flat["Transformer/encoderblock_2/MlpBlock_3/Dense_0/kernel"][3, 5] = np.nan
    np.savez(tmp_path / "nan.npz", **flat)
    code = main(["eval", "--checkpoint", str(tmp_path / "nan.npz"), "--data", str(data), "--json", *DESCRIBED])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "Transformer/encoderblock_2/MlpBlock_3/Dense_0/kernel holds 1 NaN" in err and "nan.npz" in err


def test_non_finite_logits_stop_the_evaluation(tiny_files):
    """Finite weights whose forward overflows (as bf16 can): no accuracy is reported."""
    from fastvit_jax.data import Preprocess, image_folder
    from fastvit_jax.studies.evaluate import evaluate

    _, data = tiny_files
    overflow = lambda params, images: np.where(np.arange(10) == 3, np.inf, 0.0) * np.ones((len(images), 1))
    with pytest.raises(FastViTError, match="NaN/Inf logits for 2 of 2 images"):
        evaluate(overflow, {}, image_folder(data), Preprocess("inception", 32), batch_size=2, progress=False,
                 data_parallel=False)


# ---------------------------------------------------------------- out of memory
def test_out_of_memory_is_one_line_naming_the_batch_size(tiny_files, monkeypatch, capsys):
    import jax

    from fastvit_jax import cli

    ckpt, data = tiny_files

    def exhausted(*a, **k):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.25GiB.\n"
                                         "BufferAssignment OOM Debugging.\nBufferAssignment stats: ...")

    monkeypatch.setattr(cli, "evaluate", exhausted)
    code = main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--batch-size", "512", *DESCRIBED])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "out of memory" in err and "--batch-size 512" in err and "--examples-per-step" in err
    assert "allocate 81.25GiB" in err


# ---------------------------------------------------------------- dead peers
ABORTS = r"""
import os, sys
sys.stderr.write("\reval:  10%|#         | 10/100"); sys.stderr.flush()
sys.stderr.write("E1129 21:28:24.465388    2163 coordination_service.cc:1549] Task 1 heartbeat timeout:\n1\n"
                 "The tasks have crashed.\n"
                 "F1129 21:28:24.465583    2174 client.h:80] Terminating process\n"
                 "*** Check failure stack trace: ***\n    @     0x7fdb7ee40634  absl::LogMessage::SendToLog()\n")
sys.stderr.flush()
os.abort()
"""


def test_the_supervisor_turns_a_runtime_abort_into_one_line(capfd):
    from fastvit_jax.util import supervise

    assert supervise.run([], program=[sys.executable, "-c", ABORTS]) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0].startswith("eval:") and len(lines) == 2, err  # the log line after the bar is logged
    assert lines[1].startswith("fastvit: error: process") and "heartbeats timed out" in lines[1]
    log = lines[1].split("runtime log: ")[1].rstrip(")")
    with open(log) as f:
            text = f.read()
    assert "Check failure" in text and "heartbeat timeout" in text
    assert "Check failure" not in err
    os.unlink(log)


def _two_processes(tmp_path, heartbeat_s=60):
    np.savez(tmp_path / "m.npz", **google_checkpoint(TINY))
    data = _images(tmp_path / "data", 3000, size=8)
    argv = [sys.executable, "-m", "fastvit_jax", "eval", "--checkpoint", str(tmp_path / "m.npz"), "--data", str(data),
            "--batch-size", "2", "--method", "tome", "--r", "4", "--json", *DESCRIBED]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", FASTVIT_CACHE=str(tmp_path / "c"),
               FASTVIT_HEARTBEAT_S=str(heartbeat_s))
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(env, JAX_PROCESS_ID=str(i))) for i in range(2)]
    seen = b""
    while b"eval:" not in seen:  # process 1 is evaluating: its progress bar is drawn
        chunk = procs[1].stderr.read1(4096)
        assert chunk, seen.decode(errors="replace")[-2000:]
        seen += chunk
    return procs


def _one_line_exit(survivor, started: float) -> str:
    _, err = survivor.communicate(timeout=180)
    waited = time.monotonic() - started
    err = err.decode(errors="replace")
    lines = [line for line in err.replace("\r", "\n").splitlines()  # gloo's connection note comes in every run
             if line.strip() and "eval:" not in line and not line.startswith("[Gloo]")]
    assert survivor.returncode not in (0, -6, 134) and waited < 120, (survivor.returncode, waited, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("fastvit: error:"), err[-3000:]
    return lines[0]


@pytest.mark.slow
def test_a_frozen_peer_ends_the_survivor_in_one_line_after_the_heartbeat_timeout(tmp_path):
    """Process 1 stops (SIGSTOP: its sockets stay open, only its heartbeats stop): process 0's runtime
    aborts after the heartbeat timeout, and its supervisor reports that in one line."""
    procs = _two_processes(tmp_path, heartbeat_s=10)
    child = int(subprocess.run(["pgrep", "-P", str(procs[1].pid)], capture_output=True, text=True).stdout.split()[0])
    os.kill(child, signal.SIGSTOP)
    try:
        line = _one_line_exit(procs[0], time.monotonic())
        assert "heartbeats timed out" in line and "runtime log: " in line
    finally:
        os.kill(child, signal.SIGKILL)
        procs[1].kill()
        procs[1].wait()


@pytest.mark.slow
def test_a_killed_peer_ends_the_survivor_in_one_line(tmp_path):
    """Two `fastvit eval` processes on 127.0.0.1; process 1 is killed mid-run: process 0 exits non-zero
    within 2 minutes with one error line and no stack trace. Without the test suite's compilation-cache
    variable, as users run it (the cache must not start the backend before jax.distributed)."""
    procs = _two_processes(tmp_path)
    procs[1].send_signal(signal.SIGKILL)
    line = _one_line_exit(procs[0], time.monotonic())
    procs[1].wait()
    assert "another process of this run" in line
