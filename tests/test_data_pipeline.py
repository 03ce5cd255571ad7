"""The shared batch pipeline: host sharding, shuffling, determinism, resume, flips and scaling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffjax.data.pipeline import (
    batches_from_arrays,
    host_batch_size,
    random_hflip,
    scale_to_unit,
)


def _arrays(n: int, h: int = 3, w: int = 4, seed: int = 0):
    """Random uint8 images whose label is their index, so every output can be traced back."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, 1), dtype=np.uint8), np.arange(n)


def _take(it, k):
    return list(itertools.islice(it, k))


def _labels(batches):
    return np.concatenate([b["label"] for b in batches])


def test_scale_maps_0_to_minus1_and_255_to_1():
    x = np.array([0, 51, 255], np.uint8)
    # Independent arithmetic: 51 / 255 * 2 - 1 = -0.6.
    np.testing.assert_allclose(scale_to_unit(x), [-1.0, -0.6, 1.0], rtol=0, atol=1e-7)
    assert scale_to_unit(x).dtype == np.float32
    np.testing.assert_allclose(scale_to_unit(np.array([0, 8, 16]), 16.0), [-1.0, 0.0, 1.0])


def test_global_batch_not_divisible_by_hosts_names_both():
    assert host_batch_size(12, 3) == 4
    with pytest.raises(ValueError, match=r"batch_size=10.*process_count=3"):
        host_batch_size(10, 3)
    images, labels = _arrays(30)
    with pytest.raises(ValueError, match=r"batch_size=10.*process_count=4"):
        batches_from_arrays(images, labels, batch_size=10, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index=3"):
        batches_from_arrays(images, labels, batch_size=9, process_index=3, process_count=3)


@pytest.mark.parametrize("shuffle", [True, False])
def test_hosts_read_slices_of_the_one_host_batch(shuffle):
    """Host p's batch is rows [4p, 4p + 4) of the 1-process batch of 12, so the hosts are
    disjoint and cover what one process reads; 26 = 2 * 12 + 2: the final batch of 2 cannot give
    3 hosts a row each and is dropped."""
    n, hosts = 26, 3
    images, labels = _arrays(n)
    opts = dict(batch_size=12, seed=5, shuffle=shuffle, repeat=False, drop_remainder=False)
    single = list(batches_from_arrays(images, labels, **opts))
    assert [b["image"].shape[0] for b in single] == [12, 12, 2]
    per_host = []
    for p in range(hosts):
        batches = list(batches_from_arrays(images, labels, process_index=p, process_count=hosts,
                                           **opts))  # fmt: skip
        assert [b["image"].shape[0] for b in batches] == [4, 4]
        for got, whole in zip(batches, single, strict=False):
            np.testing.assert_array_equal(got["image"], whole["image"][4 * p : 4 * p + 4])
            np.testing.assert_array_equal(got["label"], whole["label"][4 * p : 4 * p + 4])
        per_host.append(_labels(batches))
    union = np.concatenate(per_host)
    assert len(set(union.tolist())) == len(union) == 24  # disjoint
    assert set(union.tolist()) == set(_labels(single[:2]).tolist())  # the first 24 in order


def test_host_flips_are_slices_of_the_one_host_flips():
    images, labels = _arrays(24, h=3, w=5)
    opts = dict(batch_size=8, seed=4, random_flip=True)
    single = _take(batches_from_arrays(images, labels, **opts), 4)
    for p in range(2):
        host = _take(batches_from_arrays(images, labels, process_index=p, process_count=2,
                                         **opts), 4)  # fmt: skip
        for got, whole in zip(host, single, strict=True):
            np.testing.assert_array_equal(got["image"], whole["image"][4 * p : 4 * p + 4])


def test_each_epoch_is_a_fresh_permutation():
    images, labels = _arrays(24)
    it = batches_from_arrays(images, labels, batch_size=8, seed=1)
    first, second = _labels(_take(it, 3)), _labels(_take(it, 3))
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(24))
    assert not np.array_equal(first, second)  # equal with probability 1 / 24!
    assert not np.array_equal(first, np.arange(24))


def test_same_seed_same_batches_other_seed_different():
    images, labels = _arrays(50)
    opts = dict(batch_size=10, random_flip=True)
    a = _take(batches_from_arrays(images, labels, seed=3, **opts), 7)
    b = _take(batches_from_arrays(images, labels, seed=3, **opts), 7)
    c = _take(batches_from_arrays(images, labels, seed=4, **opts), 7)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(_labels(a), _labels(c))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_start_step_resumes_exactly_across_epochs(prefetch):
    images, labels = _arrays(20)  # 20 / 8: steps 2, 4, ... straddle epoch ends
    opts = dict(batch_size=8, seed=9, random_flip=True, prefetch=prefetch)
    full = _take(batches_from_arrays(images, labels, **opts), 9)
    resumed = batches_from_arrays(images, labels, start_step=5, **opts)
    assert resumed.step == 5
    for want, got in zip(full[5:], _take(resumed, 4), strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])
    assert resumed.step == 9
    resumed.close()


def test_random_flip_flips_the_width_axis_half_the_time():
    images, labels = _arrays(40, h=5, w=7)
    it = batches_from_arrays(images, labels, batch_size=40, seed=2, random_flip=True)
    n_flipped = n = 0
    for batch in _take(it, 25):
        src = images[batch["label"]]
        same = np.all(batch["image"] == scale_to_unit(src), axis=(1, 2, 3))
        flipped = np.all(batch["image"] == scale_to_unit(src[:, :, ::-1]), axis=(1, 2, 3))
        assert np.all(same ^ flipped)  # every image is exactly itself or its mirror image
        n_flipped += int(flipped.sum())
        n += len(flipped)
    # Binomial(1000, 1/2): mean 500, sd sqrt(1000) / 2 = 15.8; allow 5 sd.
    assert abs(n_flipped - n / 2) < 5 * np.sqrt(n) / 2


def test_random_hflip_reverses_columns():
    img = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)

    class AlwaysFlip:
        def random(self, n):
            return np.zeros(n)

    out = random_hflip(AlwaysFlip(), img)
    assert out[0, 1, 0, 0] == img[0, 1, 3, 0] and out[1, 2, 3, 0] == img[1, 2, 0, 0]


def test_finite_pass_without_drop_remainder_sees_every_example_once():
    images, labels = _arrays(23)
    it = batches_from_arrays(
        images, labels, batch_size=5, shuffle=False, repeat=False, drop_remainder=False
    )
    assert len(it) == 5
    assert _labels(list(it)).tolist() == list(range(23))  # in order when not shuffled


def test_no_labels_and_bad_shapes():
    images, _ = _arrays(10)
    batch = next(batches_from_arrays(images, None, batch_size=5))
    assert set(batch) == {"image"}
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        batches_from_arrays(images[..., 0], None, batch_size=5)
    with pytest.raises(ValueError, match="labels shape"):
        batches_from_arrays(images, np.arange(9), batch_size=5)
    with pytest.raises(ValueError, match="start_step"):
        batches_from_arrays(images, None, batch_size=5, start_step=-1)
