"""Built-in passes, installed as ``onnxcomp.passes``.

Each module registers its pass(es) through the public `onnxcomp.register_pass`, the same
way a third-party plugin does. Importing this package registers all of them.
"""

import importlib

# Modules are imported by name so a pass under construction (or a missing optional
# dependency inside one) cannot hide the others; an ImportError of the module itself
# is a bug and is raised.
_MODULES = (
    "dce",
    "fold_constants",
    "eliminate_identity",
    "fold_batchnorm",
    "cse",
    "prune_channels",
    "quantize_int8",
    "reconstruct",
    "distill",
)

for _name in _MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_name}":
            raise
