"""The optional tf.data reader of TFDS datasets prepared as TFRecord (`tfds_reader='tf_data'`),
reached through `make_iterator` like every other source."""

from __future__ import annotations

import io

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from PIL import Image  # noqa: E402

from diffjax.data.pipeline import scale_to_unit  # noqa: E402
from diffjax.data.sources import DataConfig, make_iterator  # noqa: E402
from diffjax.data.tfdata import tensorflow_available  # noqa: E402

N = 8


def tiny_image(i: int) -> np.ndarray:
    """A 4x5 RGB image whose top row encodes its index i."""
    img = np.zeros((4, 5, 3), np.uint8)
    img[0, :] = 20 * i
    img[2, 3] = (255, 9, i)
    return img


class DiffjaxTfrecordImages(tfds.core.GeneratorBasedBuilder):
    """8 images of 4x5x3 and 2 classes, generated locally and stored as TFRecord."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(4, 5, 3)),
                "label": tfds.features.ClassLabel(num_classes=2),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N):
            buf = io.BytesIO()
            Image.fromarray(tiny_image(i)).save(buf, format="PNG")
            yield i, {"image": buf.getvalue(), "label": i % 2}


def test_unknown_reader_and_missing_tensorflow_are_clear_errors(tmp_path):
    cfg = DataConfig(name="tfds:mnist", data_dir=str(tmp_path), tfds_reader="tfrecord")
    with pytest.raises(ValueError, match="unknown tfds_reader 'tfrecord'"):
        make_iterator(cfg, process_index=0, process_count=1)
    if not tensorflow_available():
        cfg = DataConfig(name="tfds:mnist", data_dir=str(tmp_path), tfds_reader="tf_data")
        with pytest.raises(ImportError, match=r"diffjax\[tf\]"):
            make_iterator(cfg, process_index=0, process_count=1)


@pytest.mark.slow
def test_tfrecord_dataset_reads_back_exactly(tmp_path):
    pytest.importorskip("tensorflow")
    builder = DiffjaxTfrecordImages(data_dir=str(tmp_path), file_format="tfrecord")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    cfg = DataConfig(
        name="tfds:diffjax_tfrecord_images",
        data_dir=str(tmp_path),
        tfds_reader="tf_data",
        batch_size=4,
        shuffle=False,
    )
    it = make_iterator(cfg, process_index=0, process_count=1)
    assert it.info["shape"] == (4, 5, 3) and it.info["num_classes"] == 2
    batches = [next(it) for _ in range(2)]  # one pass over the 8 examples
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    index = np.rint((images[:, 0, 0, 0] + 1.0) * 127.5 / 20).astype(int)
    assert sorted(index.tolist()) == list(range(N)) and labels.dtype == np.int32
    for img, i, label in zip(images, index, labels, strict=True):
        np.testing.assert_allclose(img, scale_to_unit(tiny_image(i)), atol=1e-6)
        assert label == i % 2
