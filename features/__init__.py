"""Images to frozen-CNN features to one HDF5 cache. Knows nothing of heads.

Data flow: folder.scan_data_folder -> extract.extract (backbones.FrozenBackbone per model) -> store.
Everything downstream reads features through store.FeatureCache, and uses only the names below.

Names are imported on first use (PEP 562), so `from features import FeatureCache` loads h5py but
not torch: the CLI's `info`, `prepare` and `--help` start in a fraction of a second.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "backbones": ("CatalogEntry", "FrozenBackbone", "Preprocessing", "build_model", "catalog",
                  "checkpoint_path", "default_image_size", "final_linear", "load_backbone",
                  "normalize", "preprocessing", "weights_enum"),
    "checkpoint": ("FINETUNED_FORMAT", "FinetunedCheckpoint", "file_sha256", "finetuned_path", "load_finetuned",
                   "read_torch_file", "save_finetuned"),
    "config": ("DECODERS", "DEVICES", "HFLIP", "POOLS", "PRECISIONS", "VIEWS", "WEIGHTS", "ExtractConfig"),
    "errors": ("CacheError", "CnnfeatError", "ConfigError", "DataLayoutError", "HeadError", "MissingInputError", "OutputExistsError",
               "WeightsUnavailableError", "WorkdirBusyError"),
    "distributed": ("Ranks", "torchrun_ranks"),
    "extract": ("ExtractReport", "ProgressFn", "default_workers", "extract", "resolve_device"),
    "folder": ("DataFolder", "Split", "scan_data_folder"),
    "freshness": ("check_fresh", "pending_extraction"),
    "images": ("load_rgb", "open_rgb", "square_tensor"),
    "prepare": ("DEFAULT_LABEL_PATTERN", "PROBLEMS_FILE", "PrepareConfig", "PrepareReport", "prepare"),
    "registry": ("BOOK", "BackboneSpec", "get_backbone", "resolve_backbones", "split_names"),
    "files": ("atomic_output", "workdir_lock"),
    "staging": ("VALUE_SETTINGS",),
    "store": ("FeatureCache", "cache_path", "dataset_name"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'features' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps `features.extract` and `features.prepare` the functions when their modules load.

    Importing a submodule sets it as an attribute of its package; two submodules share their
    name with the function they export, so that attribute is refused here and __getattr__ above
    gives the function (`from features.extract import X` still reads the module).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _MODULE_OF:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
