"""Images to frozen-CNN features to one HDF5 cache. Knows nothing of heads.

Data flow: folder.scan_data_folder -> extract.extract (backbones.FrozenBackbone per model) -> store.
Everything downstream reads features through store.FeatureCache, and uses only the names below.

Names are imported on first use (PEP 562), so `from features import FeatureCache` loads h5py but
not torch: the CLI's `info`, `prepare` and `--help` start in a fraction of a second.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .lazy import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    "backbones": ("CatalogEntry", "FrozenBackbone", "Preprocessing", "build_model", "catalog",
                  "checkpoint_path", "default_image_size", "final_linear", "load_backbone",
                  "normalize", "preprocessing", "weights_enum"),
    "checkpoint": ("FINETUNED_FORMAT", "FinetunedCheckpoint", "feature_name", "file_sha256", "finetuned_path",
                   "load_finetuned", "names_checkpoint", "read_torch_file", "save_finetuned", "weights_tag"),
    "config": ("ALL_BACKBONES", "COUNT", "DECODERS", "DEFAULT_DEVICE", "DEFAULT_SEED", "DEFAULT_TRAIN_SPLIT",
               "DEFAULT_VAL_SPLIT", "DEFAULT_WORKDIR", "DEVICES", "HFLIP", "IMAGE_SIZE", "MIN_IMAGE_SIZE", "NON_NEGATIVE",
               "NON_NEGATIVE_COUNT", "POOLS", "POSITIVE", "PRECISIONS", "SEED", "SHARE", "VIEWS", "Bounds", "ExtractConfig",
               "ProgressFn", "bounded", "bounds_of", "check_bounds", "plain_settings", "require_choices",
               "require_two_splits"),
    "errors": ("CacheError", "CnnfeatError", "ConfigError", "DataLayoutError", "MissingInputError", "OutputExistsError",
               "WeightsUnavailableError", "WorkdirBusyError", "did_you_mean"),
    "distributed": ("Ranks", "torchrun_ranks"),
    "devices": ("default_workers", "resolve_device"),
    "extract": ("ExtractReport", "ImageFeaturizer", "ImageFeatures", "extract", "feature_names"),
    "folder": ("UNLABELED", "DataFolder", "Split", "find_images", "label_of", "scan_data_folder",
               "scan_prepared_folder"),
    "metrics": ("EPS", "accuracy", "class_prior", "log_loss"),
    "splits": ("ValidationPlan", "stratified_folds", "stratified_holdout", "validation_plan"),
    "freshness": ("check_fresh", "pending_extraction"),
    "images": ("image_source", "load_rgb", "resize_square", "square_tensor"),
    "pictures": ("ImageSource", "open_rgb"),
    "prepare": ("DEFAULT_LABEL_PATTERN", "PROBLEMS_FILE", "PrepareConfig", "PrepareReport", "label_regex", "prepare"),
    "registry": ("BOOK", "BackboneSpec", "get_backbone", "registry_names", "resolve_backbones", "split_names"),
    "files": ("atomic_output", "lock_holder", "workdir_lock", "writes_workdir"),
    "staging": ("ORIGIN_SETTINGS", "STAGING_SETTINGS", "VALUE_SETTINGS", "staged_rows"),
    "store": ("FeatureCache", "cache_path", "dataset_name"),
    "job": ("JOB_NAME", "FeatureGroup", "Job", "extract_hint", "job_path", "read_job", "write_job"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """Keeps `features.extract` and `features.prepare` the functions when their modules load.

    Importing a submodule sets it as an attribute of its package; two submodules share their
    name with the function they export, so that attribute is refused here and __getattr__ above
    gives the function (`from features.extract import X` still reads the module).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in __all__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
