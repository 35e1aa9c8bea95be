"""Files: reading and writing models safely, and input hygiene.

* `onnxcomp.io.files`: `load_model` (validated, external data checked, weights left on
  disk for >2 GB external data and large single files), `save_model` (atomic, verified
  after writing, never over the input);
* `onnxcomp.io.payloads`: where a single-file model's weights lie inside the file;
* `onnxcomp.io.outputs`: output paths checked before any work, per-process temporary
  names, stale temporaries of killed runs removed, atomic text outputs;
* `onnxcomp.io.safety`: limits and checks on untrusted models (paths, sizes, depth);
* `onnxcomp.io.hygiene`: clear errors for duplicate names and cycles, sorting.
"""

from onnxcomp.io.files import load_model, model_nbytes, save_model
from onnxcomp.io.hygiene import normalize
from onnxcomp.io.outputs import check_output_path, check_output_paths, remove_stale_temps, write_text_atomic

__all__ = [
    "check_output_path", "check_output_paths", "load_model", "model_nbytes", "normalize", "remove_stale_temps",
    "save_model", "write_text_atomic",
]
