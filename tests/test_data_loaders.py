"""Local loaders (IDX, image folder, digits), resizing, toy batches and `make_iterator`."""

from __future__ import annotations

import gzip
import os
import struct
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffjax import toy
from diffjax.data import digits, folder, idx, imageops
from diffjax.data.sources import SOURCES, DataConfig, load_arrays, make_iterator
from diffjax.data.toy_source import sample_labelled


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """IDX written by hand from the format description: 00 00 code ndim, big-endian dims, data."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write(path, data: bytes, gz: bool):
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = (np.arange(12) % 10).astype(np.uint8)
    _write(tmp_path / "train-images-idx3-ubyte.gz", _idx_bytes(images), gz=True)
    _write(tmp_path / "train-labels-idx1-ubyte.gz", _idx_bytes(labels), gz=True)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(images[:4]), gz=False)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(labels[:4]), gz=False)
    return tmp_path, images, labels


def test_idx_round_trip_gzip_and_plain(mnist_dir):
    path, images, labels = mnist_dir
    x, y = idx.load_idx(str(path), "train")
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    x, y = idx.load_idx(str(path), "test")
    np.testing.assert_array_equal(x[..., 0], images[:4])
    # A parent folder with a conventional sub-folder name works too.
    os.rename(path, path.parent / "fashion-mnist")
    x, _ = idx.load_idx(str(path.parent), "train", "fashion_mnist")
    assert x.shape[0] == 12


def test_idx_big_endian_types():
    values = np.array([[1, -2], [300, 4]], np.int32)
    got = idx.parse_idx(_idx_bytes(values.astype(">i4"), code=0x0C))
    np.testing.assert_array_equal(got, values)


def test_idx_errors_name_the_file(tmp_path, mnist_dir):
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad_magic.*magic"):
        idx.read_idx(str(bad_magic))
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1])
    with pytest.raises(ValueError, match=r"short.*\(3, 2, 2\)"):
        idx.read_idx(str(short))
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(_idx_bytes(np.zeros(50, np.uint8)))[:-12])
    with pytest.raises(ValueError, match="corrupt.gz"):
        idx.read_idx(str(corrupt))
    with pytest.raises(ValueError, match="type code 0x07"):
        idx.parse_idx(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        idx.load_idx(str(tmp_path / "nowhere"))
    path, images, _ = mnist_dir
    _write(path / "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(11, np.uint8)), gz=True)
    with pytest.raises(ValueError, match="do not match 12 images"):
        idx.load_idx(str(path), "train")
    with pytest.raises(ValueError, match="'valid'"):
        idx.load_idx(str(path), "valid")


def _make_folder(root, size=(5, 6), per_class=3, mode="RGB"):
    """root/train/<class>/k.png with random pixels; returns {(class, k): array}."""
    rng = np.random.default_rng(1)
    pixels = {}
    for cls in ("dog", "cat"):  # sorted: cat = 0, dog = 1
        os.makedirs(root / "train" / cls)
        for k in range(per_class):
            shape = (size[0], size[1]) + ((3,) if mode == "RGB" else ())
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / "train" / cls / f"{k}.png")
            pixels[(cls, k)] = arr
    return pixels


def test_image_folder_reads_pngs_exactly_and_tar_gz_agrees(tmp_path):
    pixels = _make_folder(tmp_path / "data")
    images, labels, classes = folder.load_image_folder(str(tmp_path / "data"), "train")
    assert classes == ("cat", "dog")
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(images[4], pixels[("dog", 1)])  # PNG is lossless
    archive = tmp_path / "packed" / "images.tar.gz"
    os.makedirs(archive.parent)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data" / "train", arcname="top/train")
    for src in (archive, archive.parent):  # the archive, or a folder holding only it
        got, got_labels, _ = folder.load_image_folder(str(src), "train")
        np.testing.assert_array_equal(got, images)
        np.testing.assert_array_equal(got_labels, labels)


def test_image_folder_grayscale_resize_and_errors(tmp_path):
    _make_folder(tmp_path, size=(4, 4), mode="L")
    images, _, _ = folder.load_image_folder(str(tmp_path), "train", image_size=8)
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    Image.new("L", (3, 3)).save(tmp_path / "train" / "cat" / "odd.png")
    with pytest.raises(ValueError, match="odd.png"):
        folder.load_image_folder(str(tmp_path), "train")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        folder.load_image_folder(str(tmp_path), "train", image_size=4)
    with pytest.raises(FileNotFoundError, match="test"):
        folder.load_image_folder(str(tmp_path), "test")


def test_bilinear_resize_matches_jax_image_resize():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 16, (8, 8, 2)).astype(np.float32)
    ours = imageops.resize_image(x, 16)
    ref = jax.image.resize(jnp.asarray(x), (16, 16, 2), "bilinear", antialias=False)
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=0, atol=1e-4)
    wide = np.zeros((4, 8, 1), np.uint8)
    wide[:, 2:6] = 200  # the centre square of a wide image is what survives the crop
    assert np.all(imageops.resize_image(wide, 4) == 200)


def test_digits_default_shape_range_labels():
    images, labels = digits.load_digits_arrays()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    it = make_iterator(DataConfig(batch_size=64), process_index=0, process_count=1)
    batch = next(it)
    assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and it.info["num_classes"] == 10
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    # Whole dataset: 0 -> -1 and 16 -> 1 (x / 16 * 2 - 1), so both ends are reached.
    all_once = make_iterator(
        DataConfig(batch_size=599, shuffle=False, repeat=False), process_index=0, process_count=1
    )
    pixels = np.concatenate([b["image"] for b in all_once])
    assert pixels.min() == -1.0 and pixels.max() == 1.0
    np.testing.assert_allclose(pixels, images / 8.0 - 1.0, atol=1e-6)
    big = next(make_iterator(DataConfig(batch_size=8, image_size=16), process_count=1))
    assert big["image"].shape == (8, 16, 16, 1)
    with pytest.raises(ValueError, match="'test'"):
        digits.load_digits_arrays("test")


def test_make_iterator_sources_and_errors(mnist_dir, tmp_path):
    path, images, _ = mnist_dir
    cfg = DataConfig(name="mnist_idx", data_dir=str(path), batch_size=4, shuffle=False)
    batch = next(make_iterator(cfg, process_index=0, process_count=1))
    np.testing.assert_allclose(batch["image"][..., 0], images[:4] / 127.5 - 1.0, atol=1e-6)
    assert load_arrays(cfg)[0].shape == (12, 28, 28, 1)
    assert {"digits", "mnist_idx", "fashion_mnist_idx", "image_folder", "tfds"} <= set(SOURCES)
    assert "toy_ring" in SOURCES
    with pytest.raises(ValueError, match="'nope'"):
        make_iterator(DataConfig(name="nope"))
    with pytest.raises(ValueError, match="needs data_dir"):
        make_iterator(DataConfig(name="mnist_idx"))
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        make_iterator(DataConfig(name="mnist_idx", data_dir=str(tmp_path / "missing_dir")))
    with pytest.raises(ValueError, match=r"batch_size=6.*process_count=4"):
        make_iterator(DataConfig(batch_size=6), process_index=0, process_count=4)


def test_toy_labelled_sampler_matches_mixture_moments():
    mix = toy.ring(k=4, radius=3.0, std=0.2)
    n = 20000
    x, k = sample_labelled(jax.random.PRNGKey(0), mix, n)
    x, k = np.asarray(x, np.float64), np.asarray(k)
    # Mean: per-coordinate sd of the sample mean is sqrt(var / n) <= sqrt(9.04 / 2e4) = 0.021;
    # allow 5 sd. Labels: each point lies nearest its own ring centre (radius 3 >> std 0.2).
    np.testing.assert_allclose(x.mean(0), np.asarray(mix.mean()), atol=0.11)
    np.testing.assert_allclose(np.cov(x.T), np.asarray(mix.cov()), atol=0.25)
    nearest = np.argmin(((x[:, None] - np.asarray(mix.means)[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == k) > 0.999
    # The same component frequencies as toy.sample would give: 1/4 each, sd sqrt(3/16 / n).
    np.testing.assert_allclose(np.bincount(k) / n, 0.25, atol=5 * np.sqrt(3 / 16 / n))


def test_toy_batches_hosts_resume_and_shape():
    cfg = DataConfig(name="toy_ring", batch_size=64, seed=1)
    a = make_iterator(cfg, process_index=0, process_count=2)
    b = make_iterator(cfg, process_index=1, process_count=2)
    first_a, first_b = next(a), next(b)
    assert first_a["x"].shape == (32, 2) and first_a["label"].shape == (32,)
    assert not np.allclose(first_a["x"], first_b["x"])  # hosts draw different points
    second = next(a)
    resumed = next(make_iterator(cfg, process_index=0, process_count=2, start_step=1))
    np.testing.assert_array_equal(second["x"], resumed["x"])
    with pytest.raises(ValueError, match="repeat=False"):
        make_iterator(DataConfig(name="toy_ring", repeat=False))
