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


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    """The data_dir of DiffjaxTfrecordImages prepared as TFRecord (needs TensorFlow)."""
    pytest.importorskip("tensorflow")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = DiffjaxTfrecordImages(data_dir=data_dir, file_format="tfrecord")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    return data_dir


def tf_config(data_dir: str, **options) -> DataConfig:
    return DataConfig(
        name="tfds:diffjax_tfrecord_images", data_dir=data_dir, tfds_reader="tf_data", **options
    )


@pytest.mark.slow
def test_tfrecord_dataset_reads_back_exactly(prepared):
    it = make_iterator(tf_config(prepared, batch_size=4, shuffle=False), process_count=1)
    assert it.info["shape"] == (4, 5, 3) and it.info["num_classes"] == 2
    batches = [next(it) for _ in range(2)]  # one pass over the 8 examples
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    index = np.rint((images[:, 0, 0, 0] + 1.0) * 127.5 / 20).astype(int)
    assert sorted(index.tolist()) == list(range(N)) and labels.dtype == np.int32
    for img, i, label in zip(images, index, labels, strict=True):
        np.testing.assert_allclose(img, scale_to_unit(tiny_image(i)), atol=1e-6)
        assert label == i % 2


def _steps(config, steps: int, **host) -> list[dict]:
    it = make_iterator(config, **host)
    return [next(it) for _ in range(steps)]


@pytest.mark.slow
def test_each_host_reads_its_slice_of_the_one_process_batch(prepared):
    """Host p of P yields rows [p B/P, (p + 1) B/P) of the global batch a 1-process run draws
    (shuffled, flipped, across an epoch end), whatever P; resuming at a step gives that step's
    batch; a short last batch without drop_remainder is cut as `pipeline.host_slice` cuts it."""
    from diffjax.data.pipeline import host_slice

    config = tf_config(prepared, batch_size=4, seed=3, random_flip=True)
    whole = _steps(config, 5, process_index=0, process_count=1)  # 8 examples: 2.5 epochs
    flat = np.concatenate([b["image"] for b in whole])
    index = np.rint((flat[:, 0, 0, 0] + 1.0) * 127.5 / 20).astype(int)  # row 0 is 20 i
    assert index.tolist() != [i % N for i in range(20)]  # shuffled
    pairs = zip(flat, index, strict=True)
    flipped = [not np.allclose(im, scale_to_unit(tiny_image(i))) for im, i in pairs]
    assert 0 < sum(flipped) < 20  # some images flipped, some not
    for count in (2, 4):
        hosts = [_steps(config, 5, process_index=p, process_count=count) for p in range(count)]
        for step, batch in enumerate(whole):
            for key in ("image", "label"):
                joined = np.concatenate([hosts[p][step][key] for p in range(count)])
                np.testing.assert_array_equal(joined, batch[key], err_msg=f"{count} {step}")
    resumed = make_iterator(config, process_index=1, process_count=2, start_step=3)
    np.testing.assert_array_equal(next(resumed)["image"], whole[3]["image"][2:])
    last = tf_config(prepared, batch_size=6, shuffle=False, repeat=False, drop_remainder=False)
    one = list(make_iterator(last, process_index=0, process_count=1))
    assert [len(b["label"]) for b in one] == [6, 2]
    for count in (2, 3):  # 3 hosts: the last batch of 2 cannot give each a row, so it is dropped
        for p in range(count):
            mine = list(make_iterator(last, process_index=p, process_count=count))
            assert len(mine) == (2 if count == 2 else 1)
            for batch, want in zip(mine, one, strict=False):
                np.testing.assert_array_equal(batch["image"], host_slice(want["image"], p, count))
