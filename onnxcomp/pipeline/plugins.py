"""Loading third-party passes: ``--plugin FILE_OR_MODULE`` and the ``onnxcomp.passes`` entry points."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

from onnxcomp.errors import UsageError

log = logging.getLogger("onnxcomp")
ENTRY_POINT_GROUP = "onnxcomp.passes"
_loaded_entry_points = False


def load_plugin(spec: str) -> ModuleType:
    """Import a plugin from a ``.py`` file path or a dotted module name.

    Importing the module runs its ``@register_pass`` decorators.
    """
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UsageError(f"plugin file {spec} not found")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        modname = f"onnxcomp_plugin_{path.stem}_{digest}"
        if modname in sys.modules:
            return sys.modules[modname]
        module_spec = importlib.util.spec_from_file_location(modname, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"cannot import plugin file {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[modname] = module
        try:
            module_spec.loader.exec_module(module)
        except UsageError:
            sys.modules.pop(modname, None)
            raise
        except Exception as e:
            sys.modules.pop(modname, None)
            raise UsageError(f"plugin {spec} failed to import: {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise UsageError(f"plugin module {spec!r} not found ({e})") from None
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"plugin {spec} failed to import: {type(e).__name__}: {e}") from e


def load_entry_point_plugins() -> list[str]:
    """Import every module advertised in the ``onnxcomp.passes`` entry-point group (once)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return []
    _loaded_entry_points = True
    names = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
            names.append(ep.name)
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from e
    return names
