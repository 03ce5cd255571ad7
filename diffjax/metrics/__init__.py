"""Sample-quality metrics: FID, KID, precision/recall, the FID Inception-v3, low-dim distances.

Typical FID of samples in [-1, 1] against a dataset (features are [N, 2048]):

    variables = load_inception_params()          # local weights, no download, no torch
    fn = lambda x: inception_features(variables, x)
    mu, sigma = cached_statistics(f"{workdir}/fid_stats.npz",
                                  lambda: feature_statistics(features_in_batches(fn, data)))
    fid_value = frechet_distance(mu, sigma, *feature_statistics(features_in_batches(fn, samples)))
"""

from diffjax.metrics.frechet import (
    cached_statistics,
    feature_statistics,
    fid,
    frechet_distance,
    trace_sqrt_product,
)
from diffjax.metrics.inception import (
    FIDInceptionV3,
    features_in_batches,
    inception_features,
    preprocess,
    resize_bilinear_legacy,
)
from diffjax.metrics.inception_weights import default_weights_path, load_inception_params
from diffjax.metrics.kid import kid, polynomial_kernel, polynomial_mmd2
from diffjax.metrics.lowdim import mmd, sliced_wasserstein  # owned by the low-dim metrics
from diffjax.metrics.precision_recall import precision_recall
from diffjax.metrics.torch_pickle import RestrictedUnpickler, load_torch_file

__all__ = [
    "FIDInceptionV3",
    "RestrictedUnpickler",
    "cached_statistics",
    "default_weights_path",
    "feature_statistics",
    "features_in_batches",
    "fid",
    "frechet_distance",
    "inception_features",
    "kid",
    "load_inception_params",
    "load_torch_file",
    "mmd",
    "polynomial_kernel",
    "polynomial_mmd2",
    "precision_recall",
    "preprocess",
    "resize_bilinear_legacy",
    "sliced_wasserstein",
    "trace_sqrt_product",
]
