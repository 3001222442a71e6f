"""tensorflow-datasets as `--data tfds:NAME[:SPLIT]`: any prepared data set, in either file format.

Images stay encoded until a batch needs them (tfds' SkipDecoding): labels are read without decoding,
and `--limit` picks images before any is decoded. array_record files are read by random access
(no TensorFlow needed); tfrecord files are read once in order through tf.data, which needs
TensorFlow. A data set that is not prepared yet is prepared first (downloads, or the files of a
manual download such as imagenet2012's in --manual-dir).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from fastvit_jax.data.dataset import Dataset, EncodedImage
from fastvit_jax.errors import FastViTError


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'tfds:NAME[:SPLIT]' -> (NAME, SPLIT or None)."""
    parts = spec.split(":")
    if len(parts) < 2 or not parts[1] or len(parts) > 3:
        raise FastViTError(f"bad --data {spec!r}: use tfds:NAME or tfds:NAME:SPLIT (e.g. tfds:cifar10:test)")
    return parts[1], parts[2] if len(parts) > 2 else None


def evaluation_split(name: str, splits) -> str:
    """The split to evaluate when none is named: validation for ImageNet, else test, else validation."""
    prefer = ("validation", "test") if name.startswith("imagenet") else ("test", "validation")
    found = [s for s in prefer if s in splits]
    if not found:
        raise FastViTError(f"tfds {name}: name the split to use, tfds:{name}:SPLIT; it has {', '.join(sorted(splits))}")
    return found[0]


def tfds_dataset(spec: str, data_dir: str | None = None, manual_dir: str | None = None) -> Dataset:
    """'tfds:NAME[:SPLIT]' (e.g. tfds:imagenet2012:validation, tfds:cifar10:test)."""
    import tensorflow_datasets as tfds

    name, split = parse_spec(spec)
    builder = prepared_builder(tfds, name, data_dir, manual_dir)
    info = builder.info
    split = split or evaluation_split(name, info.splits)
    if split not in info.splits:
        raise FastViTError(f"tfds {name} has no split {split!r}; it has {', '.join(sorted(info.splits))}")
    if "image" not in info.features:
        raise FastViTError(f"tfds {name} has no 'image' feature (it has {', '.join(info.features)})")
    labelled = "label" in info.features
    skip = {"image": tfds.decode.SkipDecoding()}
    if str(info.file_format).lower().endswith("array_record"):
        source = builder.as_data_source(split=split, decoders=skip)
        items = [(EncodedImage(f"{spec}[{i}]", lambda i=i: source[i]["image"]), int(source[i]["label"]) if labelled
                  else -1) for i in range(len(source))]
    else:  # read once, in order: the encoded bytes stay in memory
        items = [(EncodedImage(f"{spec}[{i}]", lambda data=bytes(ex["image"]): data), int(ex["label"]) if labelled
                  else -1) for i, ex in enumerate(tfrecord_examples(tfds, builder, split, skip, name))]
    names = info.features["label"].names if labelled else None
    return Dataset(items, None if name.startswith("imagenet") else names, name=spec)


def tfrecord_examples(tfds, builder, split: str, decoders: dict, name: str):
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise FastViTError(f"tfds {name} is stored as tfrecord, which needs TensorFlow to read: "
                           f"`pip install tensorflow`, or rebuild it as array_record "
                           f"(`tfds build {name} --file_format=array_record`)") from None
    return tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders, shuffle_files=False))


def prepared_builder(tfds, name: str, data_dir: str | None, manual_dir: str | None):
    """The builder of `name`, prepared (downloaded and built, or built from --manual-dir) if it was not."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise FastViTError(f"tensorflow-datasets has no data set {name!r} in {data_dir or 'its data dir'} "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if builder.is_prepared() and not manual_dir:
        return builder
    try:
        cfg = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        with contextlib.redirect_stdout(sys.stderr):  # tfds prints its progress to stdout; keep --json clean
            builder.download_and_prepare(download_config=cfg)
    except Exception as e:
        instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
        where = manual_dir or Path(data_dir or Path.home() / "tensorflow_datasets") / "downloads" / "manual"
        if instructions:
            raise FastViTError(f"tfds {name} needs files downloaded by hand in {where}: "
                               f"{' '.join(instructions.split())[:300]}") from None
        raise FastViTError(f"tfds {name} is not prepared in {data_dir or 'the default data dir'} and preparing "
                           f"it failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); without network, "
                           f"prepare it elsewhere and pass --data-dir") from None
    return builder
