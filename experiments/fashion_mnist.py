"""Fashion-MNIST (IDX files from a local folder): the MNIST recipe on clothing images.

Launch:
  python launch/train.py --config=experiments/fashion_mnist.py --workdir=workdirs/fashion \
      --config.data.data_dir=/path/to/fashion-mnist
Arguments: `quicktest`; `conditional`.
Expected result: as experiments/mnist.py; recognisable garments after about 20k steps on a GPU.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_diffjax_mnist_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist.py")
)
_mnist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mnist)


def get_config(arg=None):
    return _mnist.get_config(arg, dataset="fashion_mnist_idx")  # same recipe, other files
