"""Command-line argument groups shared by `fastvit` and the benchmark scripts: every flag is
defined here once, and merge flags become one MergeOptions value (`merge_options`, `merge_points`)."""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

from fastvit_jax.data import FAMILIES, label_names, open_dataset
from fastvit_jax.errors import FastViTError
from fastvit_jax.runtime import ATTENTIONS, DTYPES, MERGE_IMPLS, Runtime
from fastvit_jax.merge import methods as method_registry
from fastvit_jax.merge.options import METRICS, MergeOptions, parse_methods, parse_r
from fastvit_jax.zero_shot import TEMPLATE_SETS, Prompts, read_classes, read_templates
from fastvit_jax.api import load
from fastvit_jax.checkpoints.registry import get_entry
from fastvit_jax.checkpoints.plan_file import load_plan_options
from fastvit_jax.search import budget
from fastvit_jax.studies.train import TrainConfig



class ArgumentParser(argparse.ArgumentParser):
    """A bad command line gets one line, `PROG: error: ...` (exit 2), not a usage dump."""

    def error(self, message):
        sys.stderr.write(f"{self.prog.split()[0]}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str, least: int, words: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(f"expected comma-separated {words} integers, got {text!r}")
    return values


def positive_int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32], each a positive integer."""
    return _int_list(text, 1, "positive")


def int_list(text: str) -> list[int]:
    """'8,8,0,4' -> [8, 8, 0, 4], each a non-negative integer."""
    return _int_list(text, 0, "non-negative")


def ratio(text: str) -> float:
    """A ratio in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1], got {text!r}")
    return value


def r_value(text: str) -> int | float:
    """A whole r, or a fractional one (MergeOptions checks it: fractional only with --align K)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number of tokens, got {text!r}")
    return int(value) if value.is_integer() else value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def add_model_args(p: argparse.ArgumentParser, checkpoint_required: bool = False) -> None:
    p.add_argument("--checkpoint", required=checkpoint_required,
                   help="the weights: a file (Google/big_vision .npz, timm or transformers .safetensors/.pth/.bin/.msgpack), "
                        "a folder (orbax, timm or transformers), a URL (https://, gs://), hf-hub:ORG/NAME[@REV], or "
                        "an AugReg file stem (`fastvit models --augreg`)")
    p.add_argument("--model", help="registered model name (`fastvit models`); default: inferred from --checkpoint, "
                                    "or the bundled deit_tiny_patch16_224 when no checkpoint is given")
    p.add_argument("--preprocessing", choices=FAMILIES, help="override the model's preprocessing")
    p.add_argument("--crop-pct", type=fraction, help="center-crop fraction for deit preprocessing (timm 0.9, DeiT paper 0.875)")
    p.add_argument("--gelu", choices=["tanh", "exact"], help="override the MLP activation (exact for DeiT/timm weights)")
    p.add_argument("--tower", help="image tower of a two-tower checkpoint (SigLIP/LiT: img); default: the only one")
    add_zero_shot_args(p)
    add_speed_args(p)


def add_zero_shot_args(p: argparse.ArgumentParser) -> None:

    g = p.add_argument_group("zero-shot (two-tower files: SigLIP, SigLIP 2)")
    g.add_argument("--zero-shot", action="store_true",
                   help="classify with the file's text tower: class embeddings from prompts become the image "
                        "tower's head (computed once, cached)")
    g.add_argument("--tokenizer", metavar="SPM",
                   help="the text tower's SentencePiece model or tokenizers tokenizer.json (path or URL); default: "
                        "the transformers folder's own, else the registry entry's")
    g.add_argument("--class-names", metavar="FILE",
                   help="one class a line (comma-separated aliases allowed); default: ImageNet-1k as CLIP names them")
    g.add_argument("--templates", metavar="SET|FILE", default="clip",
                   help=f"prompt templates: a bundled set ({', '.join(TEMPLATE_SETS)}) or a file of one template "
                        f"a line holding {{}}; default clip (the CLIP paper's, as big_vision evaluates)")
    g.add_argument("--all-aliases", action="store_true", help="average the prompts of every alias of a class line, "
                                                               "not only the first")
    g.add_argument("--text-pad", type=int, metavar="ID",
                   help="token id texts are padded with (default: the registry entry's; else 1 for T5 vocabularies "
                        "(SigLIP 1), the tokenizer's pad otherwise)")


def load_model(args, need_weights: bool = True, need_head: bool = True):
    """The Model of --checkpoint/--model and the overrides (fastvit_jax.load), with its zero-shot head
    when --zero-shot is given; its notes printed. need_head: refuse an image tower without a
    classifier (its features come from `fastvit embed`)."""

    model = load(args.checkpoint, model=args.model, gelu=args.gelu, preprocessing=args.preprocessing,
                 crop_pct=args.crop_pct, random_weights=not need_weights, tower=getattr(args, "tower", None),
                 runtime=Runtime.from_args(args))
    if getattr(args, "zero_shot", False):
        p = zero_shot_prompts(args)
        model = model.zero_shot(p.classes, p.templates, all_aliases=p.all_aliases, tokenizer=args.tokenizer,
                                text_pad=args.text_pad, progress=not getattr(args, "json", False))
    for text in model.notes:
        note(text)
    if need_head and not model.config.num_classes:
        raise FastViTError(f"{args.checkpoint or args.model} has no classification head (an image tower): "
                           f"`fastvit {args.command}` needs logits; use `fastvit embed` for its features"
                           f"{zero_shot_hint(args)}")
    return model


_said: set = set()  # the notes printed by this command (each once)


def note(text: str) -> None:
    """`fastvit: note: TEXT` on stderr, once per command however often it is reached."""
    if text not in _said:
        _said.add(text)
        print(f"fastvit: note: {text}", file=sys.stderr)


def new_command() -> None:
    _said.clear()
    _prompts.cache_clear()


def zero_shot_hint(args) -> str:

    entry = get_entry(args.model) if args.model else None
    if entry is not None and entry.tokenizer:
        return ", or add --zero-shot to classify through its text tower"
    return ", or add --zero-shot (with --tokenizer SPM) if it is a two-tower file"


def zero_shot_prompts(args):
    """The classes and templates of --class-names / --templates / --all-aliases (read once per command:
    the head, the report and the class names all use them)."""
    return _prompts(args.class_names, args.templates, args.all_aliases)


@functools.lru_cache(maxsize=4)
def _prompts(class_names, templates, all_aliases):

    classes, classes_from = read_classes(class_names)
    temps, templates_from = read_templates(templates)
    return Prompts(classes, temps, all_aliases, classes_from, templates_from)


def zero_shot_summary(args) -> dict:
    prompts = zero_shot_prompts(args)
    return {"classes": len(prompts.classes), "classes_from": prompts.classes_from,
            "templates": len(prompts.templates), "templates_from": prompts.templates_from,
            "prompts": len(prompts.texts()[0]), "all_aliases": prompts.all_aliases}


def class_names(args, config) -> list[str]:
    """The names of the model's outputs: the zero-shot classes, or the label set of its head."""

    return zero_shot_prompts(args).names if getattr(args, "zero_shot", False) else label_names(config.num_classes)


def check_images_exist(paths) -> None:
    """Missing image files are a typo, refused before any model loads (unreadable ones are skipped later)."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FastViTError(f"image not found: {missing[0]}{more}")


def add_data_args(p: argparse.ArgumentParser, help: str = "image folder, packed .npz (`fastvit pack`), "
                                                            "or tfds:NAME[:SPLIT]") -> None:
    p.add_argument("--data", required=True, help=help)
    p.add_argument("--data-dir", help="tensorflow-datasets data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--manual-dir", help="tensorflow-datasets manual downloads (e.g. imagenet2012's tar files)")


def open_data(args):

    tfds_kw = {"data_dir": args.data_dir, "manual_dir": args.manual_dir} if args.data.startswith("tfds:") else {}
    return open_dataset(args.data, **tfds_kw)


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """How the forward runs: one fastvit_jax.runtime.Runtime (`Runtime.from_args`)."""
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype of the attention and MLP matmuls (the residual stream, attention logits, merge "
                        "feature, matching scores and token sizes stay float32; train: parameters and optimizer "
                        "state too)")
    p.add_argument("--examples-per-step", default="auto", metavar="auto|none|N",
                   help="examples run at once inside a batch: auto = a cache-sized slice on CPU, the whole batch "
                        "on GPU/TPU; none = the whole batch")
    p.add_argument("--merge-impl", choices=MERGE_IMPLS, default="auto",
                   help="how merging runs (same merges either way): gather = top_k, gathers, scatter-add (fastest on "
                        "CPU and GPU); dense = comparisons and one-hot matmuls, no sort/scatter/gather; "
                        "auto = dense on TPU, else gather")
    p.add_argument("--compile-cache", metavar="DIR|off",
                   help="persistent compilation cache (default $FASTVIT_COMPILE_CACHE, else $FASTVIT_CACHE/xla): "
                        "a rerun reads compiled plans back instead of compiling them; off disables it")
    p.add_argument("--token-buckets", metavar="none|N",
                   help="run blocks whose rule has a padded form (ToMe, DFE, ToFu, PiToMe, ATM, PPT, MCTF, LGTM) at N "
                        "or fewer shared token counts, padded slots masked, alike blocks as one scanned program: the same "
                        "merges and logits (within rounding), fewer block programs to compile, FLOPs spent on "
                        "padding. Default: none (every block at its exact count); tune: 3 on CPU, 1 elsewhere "
                        "(its plans are scored, never timed; plans differing only in r share one program)")
    p.add_argument("--tiered", action="store_true",
                   help="a merged plan answers first with one token bucket (compiles about as fast as the dense "
                        "model) while its exact program compiles in the background, then with the exact one (a "
                        "command that ends sooner waits for that compile before it exits)")
    p.add_argument("--attention", choices=ATTENTIONS, default="auto",
                   help="einsum = matmuls and softmax as written; fused = jax.nn.dot_product_attention (cuDNN's "
                        "fused kernel on GPUs for bfloat16); auto = fused on GPU for bfloat16, else einsum")


def add_merge_args(p: argparse.ArgumentParser, *, several: bool = False, methods: str = "tome,dfe,lgtm",
                   r: str = "0:16:2", targets: bool = True) -> None:
    """The merge options. several=False: one point (--method, --r N, budget targets); several=True:
    a grid of points (--methods LIST, --r SPEC) read by `merge_points`."""
    g = p.add_argument_group("token merging")
    if several:
        g.add_argument("--plan", action="append", metavar="FILE.json",
                       help="a plan file (`fastvit plan/tune --out`); repeat for several; replaces the --methods x --r grid")
    else:
        g.add_argument("--plan", metavar="FILE.json",
                       help="take the merge options from a plan file (`fastvit plan/tune --out`) instead of the flags")
    if several:
        g.add_argument("--methods", "--method", dest="methods", default=methods,
                       help=f"comma-separated methods from {', '.join(method_registry.REGISTRY)}")
        g.add_argument("--r", "--r-values", dest="r", default=r,
                       help="tokens merged per block: START:STOP[:STEP] (inclusive) or a comma list")
    else:
        g.add_argument("--method", choices=list(method_registry.REGISTRY), help="merging method (default none: the dense model)")
        g.add_argument("--r", type=r_value, default=0,
                       help="tokens merged per block (per layer for local: spread over windows); fractional with "
                            "--align: the line aligned counts follow")
    g.add_argument("--skip", type=int, help="blocks without merging at the start (default depth//6 for dfe/lgtm, else 0)")
    g.add_argument("--metric", choices=METRICS, help="similarity feature (default: the method's: k; mctf: x, the tokens themselves)")
    g.add_argument("--no-prop-attn", action="store_true", help="disable proportional attention")
    g.add_argument("--reducer", choices=method_registry.reducer_names(),
                   help="what the global blocks of tome/dfe/lgtm do (default: ToMe's merge; pitome/tofu/mctf are "
                        "also methods of their own)")
    g.add_argument("--keep", type=ratio, metavar="RATIO",
                   help="keep-ratio schedule instead of r: each merging block keeps ceil(T x RATIO) of its T tokens "
                        "(PiToMe's release: 0.9125)")
    g.add_argument("--inflect", type=float, default=0.0, metavar="X",
                   help="ToMe's (r, inflect) schedule: r per block falls (X < 0) or rises (X > 0) around r; in [-1, 1]")
    g.add_argument("--r-list", type=int_list, metavar="R0,R1,...",
                   help="an explicit r for each block from block 0, instead of r (missing blocks merge nothing)")
    g.add_argument("--align", type=int, default=0, metavar="K",
                   help="round every global block's token count to the nearest multiple of K (GEMM tiles; fewer "
                        "distinct shapes across plans); budgets still hold (--target-* may pick a fractional r "
                        "to fill them); 0 = exact r")
    for knob in method_registry.knobs().values():  # each method's own settings, from its record
        g.add_argument(knob.flag, dest=knob.name, type=knob.type, metavar=knob.metavar, default=knob.default,
                       help=f"{', '.join(method_registry.owners(knob.name))}: {knob.help}")
    if targets and not several:
        g.add_argument("--target-gflops", type=positive_float, help="pick the smallest r whose plan has at most X GFLOPs")
        g.add_argument("--target-speedup", type=positive_float,
                       help="pick the smallest r with X times fewer FLOPs than dense (as in `fastvit tune`)")
        g.add_argument("--speedup-by", choices=["flops", "measured"], default="flops",
                       help="--target-speedup judged by the FLOPs ratio (default, deterministic) or by timing the "
                            "jit forward here")


def point_options(args, method: str, r: int) -> MergeOptions:
    """The merge flags' options for one method and r (no budget search, no notes)."""
    given = {k: getattr(args, k, None) for k in method_registry.knobs()}  # a method's own flags, when given
    return MergeOptions.from_dict({"method": method, "r": r, "skip": args.skip, "metric": args.metric,
                                   "prop_attn": False if args.no_prop_attn else None, "reducer": args.reducer,
                                   "align": args.align, "inflect": args.inflect, "r_list": args.r_list,
                                   "keep": args.keep, **{k: v for k, v in given.items() if v is not None}})


def merge_options(args, config=None, params=None, method: str | None = None) -> MergeOptions:
    """The one point of `add_merge_args(several=False)`, for `method` if given. With a config, r is
    chosen by --target-gflops / --target-speedup when one is given (params: for timing)."""
    if getattr(args, "plan", None):
        if args.method not in (None, "none") or args.r or has_target(args):
            raise FastViTError("--plan gives the merge options; leave out --method/--r/--target-*")
        if config is None:
            raise FastViTError("--plan needs the model to check the plan against")

        options = load_plan_options(args.plan, config)
        return options if method is None else point_options(args, method, options.r)  # visualize --compare: the plan's r
    if method is None and args.method is None and (args.r or has_target(args)):
        raise FastViTError(f"{'--r ' + str(args.r) if args.r else '--target-*'} needs a merging --method "
                           f"({', '.join(m for m in method_registry.REGISTRY if m != 'none')})")
    options = point_options(args, method or args.method or "none", args.r)
    if config is None or not has_target(args):
        if options.method != "none" and not options.merges:
            note(f"--method {options.method} with r = 0 is the dense model (pass --r N or --target-gflops X)")
        return options

    return budget.options_for_target(config, options, gflops_target=args.target_gflops, params=params,
                                     speedup_target=args.target_speedup, measured=args.speedup_by == "measured")


def has_target(args) -> bool:
    return getattr(args, "target_gflops", None) is not None or getattr(args, "target_speedup", None) is not None


def merge_points(args, config=None) -> list[MergeOptions]:
    """The grid of `add_merge_args(several=True)`: every method at every r, in that order; or the
    options of the --plan files (checked against config)."""
    if getattr(args, "plan", None):

        return list(dict.fromkeys(load_plan_options(f, config) for f in args.plan))
    # a keep ratio or an explicit list replaces the r grid: one point per method
    rs = [0] if args.keep is not None or args.r_list is not None else parse_r(args.r)
    return [point_options(args, m, r) for m in parse_methods(args.methods) for r in rs]


def add_sharpness_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p, "labelled image folder, packed .npz, or tfds:NAME[:SPLIT]")
    p.add_argument("--num-images", type=positive_int, default=64)
    p.add_argument("--micro-batch", type=positive_int, default=8, help="images per HVP micro-batch (memory)")
    p.add_argument("--iters", type=positive_int, default=20, help="max HVPs per power-iteration run / Lanczos steps")
    p.add_argument("--tol", type=positive_float, default=1e-3, help="relative change to stop power iteration")
    p.add_argument("--solver", choices=["power", "lanczos"], default="power")
    p.add_argument("--seed", type=int, default=0)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """`fastvit train` and `fastvit finetune`; read back by `train_config`."""
    add_model_args(p)
    add_data_args(p, "labelled images: class folders, synset-named files, packed .npz, or tfds:NAME[:SPLIT]")
    p.add_argument("--optimizer", choices=["adamw", "sam", "asam"], default="sam")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--steps", type=positive_int, default=100)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--ckpt-every", type=positive_int, default=50, help="save resumable state every K steps")
    p.add_argument("--keep-checkpoints", type=positive_int, default=2, help="resumable states kept (the newest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=positive_int, help="use only the first N images")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--out", required=True, help="OUT.npz (Google layout) or a directory (orbax)")


def train_config(args):

    return TrainConfig(optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, rho=args.rho,
                       steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, ckpt_every=args.ckpt_every,
                       seed=args.seed, augment=not args.no_augment, dtype=args.dtype)


def model_meta(args) -> dict | None:
    """What `fastvit convert --model NAME` writes into the file: the entry's GELU and preprocessing."""
    if not getattr(args, "model", None):
        return None

    e = get_entry(args.model)
    return {"family": e.name, "gelu": e.config.gelu, "preprocessing": e.preprocessing, "crop_pct": e.crop_pct}
