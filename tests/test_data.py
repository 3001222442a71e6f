"""Image folders, labels, preprocessing of every image mode, bad images."""

import math

import numpy as np
import pytest
from PIL import Image

from fastvit_jax import data
from fastvit_jax.errors import FastViTError


def _img(mode, size=(300, 200)):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "P", "LA", "I;16"])
@pytest.mark.parametrize("family", ["inception", "deit", "crop"])
def test_every_mode_becomes_rgb(mode, family):
    img = _img("RGB") if mode == "I;16" else _img(mode)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 200))
    out = data.Preprocess(family, 224)(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32 and np.isfinite(out).all()


def test_inception_range_and_values():
    img = Image.new("RGB", (50, 80), (255, 0, 128))
    out = data.Preprocess("inception", 32)(img)
    np.testing.assert_allclose(out[0, 0], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)


def test_deit_resize_and_crop_geometry():
    # 300x200 (w x h): shorter side 200 -> floor(224/0.9) = 248, longer int(248*300/200) = 372;
    # center crop 224 from (372, 248): left = round(74), top = round(12).
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    got = data.Preprocess("deit", 224, 0.9)(img)
    ref = np.asarray(img.resize((372, 248), Image.BICUBIC), np.float32)[12:236, 74:298] / 255.0
    np.testing.assert_allclose(got, (ref - data.IMAGENET_MEAN) / data.IMAGENET_STD, atol=1e-5)
    assert math.floor(224 / 0.875) == 256
    assert data.Preprocess("deit", 224, 0.875)(img).shape == (224, 224, 3)


def test_folder_labels(tmp_path):
    for cls in ("dog", "cat"):
        (tmp_path / "cls" / cls).mkdir(parents=True)
        _img("RGB", (40, 40)).save(tmp_path / "cls" / cls / "a.jpg")
    ds = data.image_folder(tmp_path / "cls")
    assert ds.class_names == ["cat", "dog"] and [lab for _, lab in ds.items] == [0, 1]
    (tmp_path / "syn" / "n01443537").mkdir(parents=True)
    _img("RGB", (40, 40)).save(tmp_path / "syn" / "n01443537" / "x.JPEG")
    assert data.image_folder(tmp_path / "syn").items[0][1] == 1  # goldfish
    (tmp_path / "flat").mkdir()
    _img("L", (40, 40)).save(tmp_path / "flat" / "n01440764_tench.png")
    _img("RGB", (40, 40)).save(tmp_path / "flat" / "n01443537_goldfish.webp")
    assert [lab for _, lab in data.image_folder(tmp_path / "flat").items] == [0, 1]


def test_unreadable_image_is_skipped_and_reported(tmp_path):
    _img("RGB", (40, 40)).save(tmp_path / "n01440764_ok.jpg")
    (tmp_path / "n01443537_broken.jpg").write_bytes(b"not a jpeg")
    failed = []
    out = list(data.batches(data.image_folder(tmp_path), data.Preprocess("inception", 32), 4, failed=failed))
    assert sum(b.count for b in out) == 1
    assert len(failed) == 1 and "broken.jpg" in failed[0][0] and "cannot read image" in failed[0][1]


def test_batches_are_padded(tmp_path):
    for i in range(5):
        _img("RGB", (40, 40)).save(tmp_path / f"n01440764_{i}.jpg")
    out = list(data.batches(data.image_folder(tmp_path), data.Preprocess("inception", 16), 2))
    assert [b.count for b in out] == [2, 2, 1]
    assert out[-1].images.shape == (2, 16, 16, 3) and out[-1].labels[1] == -1


def test_missing_and_empty(tmp_path):
    with pytest.raises(FastViTError, match="data not found"):
        data.image_folder(tmp_path / "none")
    with pytest.raises(FastViTError, match="no images"):
        data.image_folder(tmp_path)


def test_imagenet_classes_shipped():
    classes = data.imagenet_classes()
    assert len(classes) == 1000 and classes[0] == ("n01440764", "tench")
    assert [s for s, _ in classes] == sorted(s for s, _ in classes)


def test_shared_samples_labels(shared_dir):
    ds = data.image_folder(shared_dir / "data" / "imagenet-samples")
    rows = [line.split("\t") for line in (shared_dir / "data" / "imagenet-samples.tsv").read_text().splitlines()]
    by_file = {r[3]: int(r[0]) for r in rows}
    assert len(ds) == 1000
    assert all(lab == by_file[p.name] for p, lab in ds.items)


def test_crop_family_is_a_center_crop_of_the_32px_image():
    """CIFAR models trained on random 28 x 28 crops: evaluation takes the central 28 x 28 of 32 x 32."""
    arr = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pre = data.Preprocess("crop", 28, 0.875)
    np.testing.assert_allclose(pre(Image.fromarray(arr)), arr[2:30, 2:30] / 127.5 - 1.0, atol=1e-6)
    train_pre = pre.for_training()
    assert (train_pre.family, train_pre.size) == ("inception", 32)
    np.testing.assert_allclose(train_pre(Image.fromarray(arr)), arr / 127.5 - 1.0, atol=1e-6)


def test_pack_holds_the_same_images_and_labels(tmp_path):
    rng = np.random.default_rng(3)
    for cls in ("bird", "cat", "dog"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "d" / cls / f"{i}.jpg")
    folder = data.image_folder(tmp_path / "d")
    data.pack_dataset(folder, tmp_path / "p.npz")
    packed = data.open_dataset(str(tmp_path / "p.npz"))
    assert packed.class_names == ["bird", "cat", "dog"] and len(packed) == 9
    pre = data.Preprocess("inception", 32)
    a, la = data.load_arrays(folder, pre)
    b, lb = data.load_arrays(packed, pre)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_not_a_pack_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "weights.npz", x=np.zeros(3))
    with pytest.raises(FastViTError, match="not a packed image set .*missing encoded"):
        data.open_dataset(str(tmp_path / "weights.npz"))
