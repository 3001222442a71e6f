"""`--data tfds:NAME` on data sets built offline here: same top-1 as the image folder they came from,
labels read without decoding, one line when the data set or a split is missing."""

import json
import sys
import textwrap

import pytest

from fastvit_jax.cli import main
from fastvit_jax.checkpoints.registry import asset_path

BUILDER = textwrap.dedent('''
    """A tfds builder over an image folder of synset-named files (written by the tests)."""
    import os
    import tensorflow_datasets as tfds
    from fastvit_jax.data import image_folder

    class BundledImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=1000)}))

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for i, (path, label) in enumerate(image_folder(os.environ["FASTVIT_TEST_IMAGES"]).items):
                yield i, {"image": str(path), "label": label}
''')


@pytest.fixture(scope="module")
def builder_class(tmp_path_factory):
    """The builder, imported once (tfds registers a builder name once per process)."""
    import os

    pkg = tmp_path_factory.mktemp("pkg") / "bundled_images_builder"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(BUILDER)
    sys.path.insert(0, str(pkg.parent))
    os.environ["FASTVIT_TEST_IMAGES"] = str(asset_path("images"))
    try:
        from bundled_images_builder import BundledImages
    finally:
        sys.path.remove(str(pkg.parent))
    return BundledImages


def build(builder_class, tmp_path, file_format):
    builder_class(data_dir=str(tmp_path / "tfds"), file_format=file_format).download_and_prepare()
    return str(tmp_path / "tfds")


def eval_json(capsys, data, *extra):
    capsys.readouterr()  # what building the data set printed
    code = main(["eval", "--data", data, "--json", "--no-progress", "--batch-size", "16", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_array_record_set_scores_as_its_folder(builder_class, tmp_path, capsys):
    data_dir = build(builder_class, tmp_path, "array_record")
    folder = eval_json(capsys, str(asset_path("images")))
    got = eval_json(capsys, "tfds:bundled_images", "--data-dir", data_dir)
    assert (got["images"], got["top1"], got["top5"]) == (folder["images"], folder["top1"], folder["top5"]) == (
        32, folder["top1"], folder["top5"])
    limited = eval_json(capsys, "tfds:bundled_images:validation", "--data-dir", data_dir, "--limit", "5")
    assert limited["images"] == 5


@pytest.mark.slow
def test_labels_are_read_without_decoding(builder_class, tmp_path, monkeypatch):
    from PIL import Image

    from fastvit_jax.data import Preprocess, batches, image_folder
    from fastvit_jax.data.tfds import tfds_dataset

    data_dir = build(builder_class, tmp_path, "array_record")
    opened, real_open = [], Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    ds = tfds_dataset("tfds:bundled_images", data_dir=data_dir)
    folder = image_folder(asset_path("images"))
    assert len(ds) == 32 and opened == []
    assert sorted(label for _, label in ds.items) == sorted(label for _, label in folder.items)
    next(batches(ds.limit(3), Preprocess("deit", 224), 4))
    assert len(opened) == 3  # only the images asked for are decoded


@pytest.mark.slow
def test_tfrecord_set_scores_as_its_folder(builder_class, tmp_path, capsys):
    pytest.importorskip("tensorflow", reason="tfrecord files need TensorFlow (not installed in CI)")
    data_dir = build(builder_class, tmp_path, "tfrecord")
    folder = eval_json(capsys, str(asset_path("images")))
    got = eval_json(capsys, "tfds:bundled_images", "--data-dir", data_dir)
    assert (got["images"], got["top1"], got["top5"]) == (folder["images"], folder["top1"], folder["top5"])


def test_tfrecord_without_tensorflow_is_one_line():
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed")
    except ImportError:
        pass
    from fastvit_jax.data import tfds as data_tfds
    from fastvit_jax.errors import FastViTError

    with pytest.raises(FastViTError, match="stored as tfrecord, which needs TensorFlow.*pip install tensorflow"):
        data_tfds.tfrecord_examples(None, None, "test", {}, "some_set")


@pytest.mark.parametrize("spec,msg", [
    ("tfds:", "use tfds:NAME or tfds:NAME:SPLIT"),
    ("tfds:no_such_set_here", "tensorflow-datasets has no data set 'no_such_set_here'"),
])
def test_missing_sets_are_one_line(capsys, tmp_path, spec, msg):
    code = main(["eval", "--data", spec, "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.slow
def test_missing_split_is_one_line(builder_class, tmp_path, capsys):
    data_dir = build(builder_class, tmp_path, "array_record")
    capsys.readouterr()
    code = main(["eval", "--data", "tfds:bundled_images:train", "--data-dir", data_dir])
    err = capsys.readouterr().err
    assert code == 2 and "has no split 'train'; it has validation" in err and err.count("\n") == 1, err


def test_imagenet_without_its_manual_download_names_the_files(tmp_path, capsys):
    code = main(["eval", "--data", "tfds:imagenet2012", "--data-dir", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("fastvit: error:")]
    assert code == 2 and out == "" and "Traceback" not in err and len(errors) == 1
    assert f"needs files downloaded by hand in {tmp_path / 'downloads' / 'manual'}" in errors[0]
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in errors[0]
