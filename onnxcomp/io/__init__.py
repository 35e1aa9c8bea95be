"""Files: reading and writing models safely, and input hygiene.

* `onnxcomp.io.files`: `load_model` (validated, external data checked, lazy for >2 GB),
  `save_model` (atomic, verified after writing, never over the input);
* `onnxcomp.io.safety`: limits and checks on untrusted models (paths, sizes, depth);
* `onnxcomp.io.hygiene`: clear errors for duplicate names and cycles, sorting.
"""

from onnxcomp.io.files import check_output_path, load_model, model_nbytes, save_model
from onnxcomp.io.hygiene import normalize

__all__ = ["check_output_path", "load_model", "model_nbytes", "normalize", "save_model"]
