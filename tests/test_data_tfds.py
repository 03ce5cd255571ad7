"""TFDS without TensorFlow: mock data, a real tiny ArrayRecord dataset, fail-fast errors."""

from __future__ import annotations

import io

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from PIL import Image  # noqa: E402

from diffjax.data.pipeline import scale_to_unit  # noqa: E402
from diffjax.data.sources import DataConfig, make_iterator  # noqa: E402
from diffjax.data.tfdata import tensorflow_available  # noqa: E402
from diffjax.data.tfds_source import tfds_data_source  # noqa: E402

N_TINY = 12


def _tiny_image(i: int) -> np.ndarray:
    """A 4x5 RGB image whose top row encodes its index; the [1, 1] pixel breaks the symmetry."""
    img = np.zeros((4, 5, 3), np.uint8)
    img[0, :] = 10 * i
    img[1, 1] = (255, 7, i)
    return img


def _index_of(images: np.ndarray) -> np.ndarray:
    """The index encoded in the top row of scaled images [B, 4, 5, 3] (unchanged by a flip)."""
    return np.rint((images[:, 0, 0, 0] + 1.0) * 127.5 / 10).astype(int)


class DiffjaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """12 images of 4x5x3 and 3 classes, generated locally (registered as diffjax_tiny_images)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(4, 5, 3)),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N_TINY):
            buf = io.BytesIO()
            Image.fromarray(_tiny_image(i)).save(buf, format="PNG")  # TFDS needs encoded images
            yield i, {"image": buf.getvalue(), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = DiffjaxTinyImages(data_dir=str(data_dir), file_format="array_record")
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
    return str(data_dir)


def test_real_arrayrecord_dataset_reads_back_exactly(tiny_dir):
    cfg = DataConfig(
        name="tfds:diffjax_tiny_images", data_dir=tiny_dir, batch_size=6, shuffle=False,
        repeat=False,
    )  # fmt: skip
    it = make_iterator(cfg, process_index=0, process_count=1)
    assert it.info["shape"] == (4, 5, 3) and it.info["num_classes"] == 3
    batches = list(it)
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert images.shape == (N_TINY, 4, 5, 3) and labels.dtype == np.int32
    index = _index_of(images)  # TFDS may store the records in any order
    assert sorted(index.tolist()) == list(range(N_TINY))
    for img, i, label in zip(images, index, labels, strict=True):
        np.testing.assert_allclose(img, scale_to_unit(_tiny_image(i)), atol=1e-6)
        assert label == i % 3


def test_hosts_shard_a_tfds_dataset_disjointly(tiny_dir):
    seen, flips = [], 0
    for p in range(2):
        cfg = DataConfig(
            name="tfds:diffjax_tiny_images", data_dir=tiny_dir, batch_size=4, seed=3, repeat=False,
            random_flip=True,
        )  # fmt: skip
        for batch in make_iterator(cfg, process_index=p, process_count=2):
            assert batch["image"].shape == (2, 4, 5, 3)
            for img, i in zip(batch["image"], _index_of(batch["image"]), strict=True):
                original = scale_to_unit(_tiny_image(i))
                flipped = np.allclose(img, original[:, ::-1], atol=1e-6)
                assert flipped or np.allclose(img, original, atol=1e-6)
                flips += flipped
            seen += _index_of(batch["image"]).tolist()
    assert sorted(seen) == list(range(N_TINY))  # 2 hosts x 6: disjoint and covering
    assert 0 < flips < N_TINY  # all-or-none has probability 2 / 2**12


def test_mock_data_mnist_without_tensorflow(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        cfg = DataConfig(name="tfds:mnist", data_dir=str(tmp_path), batch_size=8, random_flip=True)
        it = make_iterator(cfg, process_index=0, process_count=1)
        batches = [next(it) for _ in range(4)]  # runs past the 20 examples into epoch 2
    for b in batches:
        assert b["image"].shape == (8, 28, 28, 1) and b["image"].dtype == np.float32
        assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
        assert b["label"].dtype == np.int32 and np.all((0 <= b["label"]) & (b["label"] < 10))
    assert it.info["num_classes"] == 10


def test_fail_fast_errors(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        tfds_data_source("mnist", "train", str(tmp_path / "no_such_dir"))
    with pytest.raises(ValueError, match="'not_a_dataset_xyz'"):
        tfds_data_source("not_a_dataset_xyz", "train", str(tmp_path))
    # A known dataset that is not prepared in data_dir fails at once (never downloads).
    with pytest.raises(FileNotFoundError, match="not prepared"):
        tfds_data_source("mnist", "train", str(tmp_path))
    with pytest.raises(ValueError, match="tfds_name"):
        make_iterator(DataConfig(name="tfds"))
    with pytest.raises(ValueError, match="'pixels'"):
        make_iterator(
            DataConfig(name="tfds:diffjax_tiny_images", data_dir=tiny_dir, image_key="pixels")
        )


@pytest.mark.skipif(not tensorflow_available(), reason="the tf.data path needs TensorFlow")
def test_tfdata_path_smoke(tmp_path):
    from diffjax.data.tfdata import tfdata_batches

    with tfds.testing.mock_data(num_examples=16):
        it = tfdata_batches("mnist", batch_size=8, data_dir=str(tmp_path))
        batch = next(it)
    assert batch["image"].shape == (8, 28, 28, 1) and batch["label"].shape == (8,)
