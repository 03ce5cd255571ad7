"""Captioned compositions: captions name both items in order (read back by an independent rule),
images and labels agree, examples are deterministic in (seed, index), IDX files load, and the
tokenizer built from the dataset covers every caption."""

import struct

import numpy as np
import pytest

from diffjax.data.captions import (
    CIFAR10_NAMES,
    FASHION_MNIST_NAMES,
    MNIST_NAMES,
    PAIR_TEMPLATES,
    ClassCaptions,
    PairCaptions,
    compose,
    pair_caption,
    with_article,
)
from diffjax.data.text import WordTokenizer, split_words


def synthetic(n=40, seed=0, classes=10):
    """Fake 28x28 uint8 items whose pixels encode the label: value 20 label + 5."""
    labels = np.random.default_rng(seed).integers(0, classes, n).astype(np.int32)
    images = np.broadcast_to((20 * labels + 5).astype(np.uint8)[:, None, None], (n, 28, 28))
    return np.array(images), labels


def read_pair(caption, names):
    """An independent reading rule: "X then Y" puts X left; otherwise the first of the words
    left/right after the first-named item gives that item's side."""
    words = split_words(caption)
    hits = sorted(
        (words.index(split_words(n)[0]), n) for n in set(names) if split_words(n)[0] in words
    )
    if len(hits) == 1:  # the same item twice
        return hits[0][1], hits[0][1]
    (i, first), (_, second) = hits
    if "then" in words:
        return first, second
    side = next(w for w in words[i:] if w in ("left", "right"))
    return (first, second) if side == "left" else (second, first)


@pytest.mark.parametrize("template", PAIR_TEMPLATES)
def test_templates_name_both_items_in_order(template):
    for left, right in [("seven", "two"), ("eight", "one"), ("zero", "nine")]:
        caption = pair_caption(template, left, right)
        assert read_pair(caption, MNIST_NAMES) == (left, right), caption
    assert pair_caption(PAIR_TEMPLATES[0], "seven", "two") == "a seven to the left of a two"
    assert with_article("ankle boot") == "an ankle boot" and with_article("bag") == "a bag"


def test_examples_match_their_images_labels_and_captions():
    images, labels = synthetic()
    data = PairCaptions(images, labels, MNIST_NAMES, seed=3)
    templates_seen = set()
    for index in range(len(data)):
        ex = data[index]
        left, right = ex["labels"]
        assert ex["image"].shape == (28, 56, 1) and ex["image"].dtype == np.uint8
        assert ex["image"][0, 0, 0] == 20 * left + 5 and ex["image"][0, 28, 0] == 20 * right + 5
        assert read_pair(ex["caption"], MNIST_NAMES) == (MNIST_NAMES[left], MNIST_NAMES[right])
        templates_seen.add(ex["template"])
    assert templates_seen == set(range(len(PAIR_TEMPLATES)))
    batch = data.batch([0, 5, 7])
    assert batch["image"].shape == (3, 28, 56, 1) and batch["labels"].shape == (3, 2)
    assert batch["caption"][1] == data[5]["caption"]


def test_same_seed_and_index_give_the_same_example():
    images, labels = synthetic()
    a, b = PairCaptions(images, labels, seed=1), PairCaptions(images, labels, seed=1)
    for index in (0, 17, 39):
        ea, eb = a[index], b[index]
        np.testing.assert_array_equal(ea["image"], eb["image"])
        assert ea["caption"] == eb["caption"] and ea["template"] == eb["template"]
    c = PairCaptions(images, labels, seed=2)
    assert [a[i]["caption"] for i in range(20)] != [c[i]["caption"] for i in range(20)]
    # Random access: reading an index alone equals reading it after the others.
    assert PairCaptions(images, labels, seed=1)[39]["caption"] == ea["caption"]
    with pytest.raises(ValueError, match=r"index 40 out of range \[0, 40\)"):
        a[40]


def test_square_layout_pools_each_item_into_half_the_canvas():
    left = np.arange(28 * 28, dtype=np.float32).reshape(28, 28, 1)
    right = -left
    canvas = compose(left, right, "square")
    assert canvas.shape == (28, 28, 1)
    np.testing.assert_allclose(canvas[7, 0, 0], left[:2, :2].mean())
    np.testing.assert_allclose(canvas[20, 27, 0], right[26:, 26:].mean())
    assert np.all(canvas[:7] == 0) and np.all(canvas[21:] == 0)
    images, labels = synthetic()
    ex = PairCaptions(images, labels, layout="square")[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"][7, 0, 0] == 20 * ex["labels"][0] + 5
    with pytest.raises(ValueError, match="unknown layout 'tall'"):
        PairCaptions(images, labels, layout="tall")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        PairCaptions(images, labels + 10)


def _idx(array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1").tobytes()


def test_from_idx_and_a_tokenizer_that_covers_every_caption(tmp_path):
    images, labels = synthetic(12, classes=10)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels))
    data = PairCaptions.from_idx(str(tmp_path), "fashion_mnist", seed=0)
    assert data.names == FASHION_MNIST_NAMES and len(data) == 12
    np.testing.assert_array_equal(data.images[..., 0], images)
    captions = data.all_captions()
    assert len(captions) == len(PAIR_TEMPLATES) * 100
    tok = WordTokenizer.from_captions(captions)
    ids = tok(captions)
    assert not np.any(ids == tok.unk_id)
    assert "an ankle boot to the left of a t-shirt" in captions


def test_class_captions_name_the_class():
    images, labels = synthetic(10)
    data = ClassCaptions(images, labels, CIFAR10_NAMES, seed=0)
    for i in range(len(data)):
        ex = data[i]
        assert CIFAR10_NAMES[ex["labels"]] in ex["caption"] and ex["labels"] == labels[i]
    assert data[3]["caption"] == ClassCaptions(images, labels, CIFAR10_NAMES)[3]["caption"]
    assert not np.any(WordTokenizer.from_captions(data.all_captions())(data.all_captions()) == 1)
