"""Built-in passes, installed as ``onnxcomp.passes``.

Each module registers its pass(es) through the public `onnxcomp.register_pass`, the same
way a third-party plugin does. Importing this package registers all of them.
"""

from onnxcomp.passes import (  # noqa: F401
    cse,
    dce,
    distill,
    eliminate_identity,
    fold_batchnorm,
    fold_constants,
    prune_channels,
    quantize_int8,
    quantize_weights,
    reconstruct,
)
