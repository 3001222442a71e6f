"""Train the AdamW / SAM pair of CIFAR-10 ViTs (identical but for the optimizer) inside a time budget.

    python benchmarks/train_cifar_pair.py --data cifar10_train.npz --budget-s 480 --out runs/pair

`--data` is a class-folder tree or a `fastvit pack` file. Both runs are plain `fastvit train`
commands. A 60-step probe of each optimizer measures steps/s (compilation excluded); the epoch count
is then the largest that fits both runs, one after the other, into what is left of --budget-s
(capped by --max-epochs), and the two runs go concurrently (each on its own share of the device).
Writes OUT/{adamw,sam}.npz, OUT/{adamw,sam}.json (train results) and OUT/recipe.json.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from fastvit_jax.cli.arguments import ArgumentParser
from fastvit_jax.errors import report_errors


def fastvit_train(args, optimizer: str, steps: int, warmup: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "fastvit_jax.cli", "train", "--json", "--model", args.model, "--data", args.data,
            "--optimizer", optimizer, "--rho", str(args.rho), "--lr", str(args.lr),
            "--weight-decay", str(args.weight_decay), "--steps", str(steps), "--warmup", str(warmup),
            "--batch-size", str(args.batch_size), "--ckpt-every", str(steps + 1), "--seed", str(args.seed),
            "--out", str(out)]


def run_json(cmd: list[str], log: Path) -> dict:
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return json.loads(proc.stdout)


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="vit_cifar_patch2_28")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--train-size", type=int, default=50000, help="images in --data (for steps per epoch)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env_note = {"XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}
    rates = {}
    for opt in ("adamw", "sam"):
        res = run_json(fastvit_train(args, opt, 60, 0, out / f"probe_{opt}.npz"), out / f"probe_{opt}.log")
        rates[opt] = res["steps_per_s"]
        print(f"probe {opt}: {rates[opt]:.1f} steps/s", file=sys.stderr, flush=True)
    per_epoch = args.train_size // args.batch_size
    left = args.budget_s - (time.perf_counter() - t_start) - 60  # data loading and compilation of the real runs
    epochs = max(1, min(args.max_epochs, math.floor(left / (per_epoch * (1 / rates["adamw"] + 1 / rates["sam"])))))
    steps, warmup = epochs * per_epoch, round(args.warmup_epochs * per_epoch)
    recipe = {**{k: v for k, v in vars(args).items() if k != "out"}, "epochs": epochs, "steps": steps,
              "warmup_steps": warmup, "probe_steps_per_s": rates, "env": env_note}
    print(f"training both for {epochs} epochs ({steps} steps)", file=sys.stderr, flush=True)
    procs = {}
    for opt in ("adamw", "sam"):
        log = (out / f"{opt}.log").open("w")
        procs[opt] = subprocess.Popen(fastvit_train(args, opt, steps, warmup, out / f"{opt}.npz"),
                                      stdout=subprocess.PIPE, stderr=log, text=True)
    for opt, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{opt} training failed (exit {proc.returncode}); see {out / (opt + '.log')}")
        res = json.loads(stdout)
        (out / f"{opt}.json").write_text(json.dumps(res, indent=2))
        recipe[f"{opt}_wall_s"] = res["wall_s"]
        print(f"{opt}: {res['wall_s']:.0f} s, final loss {res['losses'][-1][1]:.4f}", file=sys.stderr, flush=True)
    recipe["total_wall_s"] = time.perf_counter() - t_start
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    print(json.dumps(recipe, indent=2))


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
