"""Images to frozen-CNN features to one HDF5 cache. Knows nothing of heads.

Data flow: images.scan_data_folder -> extract.extract (backbones.FrozenBackbone per model) -> store.
Everything downstream reads features through store.FeatureCache.
"""

__version__ = "0.1.0"

from .backbones import (  # noqa: E402
    BACKBONES,
    BackboneSpec,
    FrozenBackbone,
    WeightsUnavailableError,
    checkpoint_path,
    get_backbone,
    load_backbone,
    resolve_backbones,
)
from .extract import ExtractConfig, ExtractReport, extract  # noqa: E402
from .images import DataLayoutError, scan_data_folder  # noqa: E402
from .store import CacheError, FeatureCache, WorkdirBusyError, cache_path  # noqa: E402

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "CacheError",
    "DataLayoutError",
    "ExtractConfig",
    "ExtractReport",
    "FeatureCache",
    "FrozenBackbone",
    "WeightsUnavailableError",
    "WorkdirBusyError",
    "cache_path",
    "checkpoint_path",
    "extract",
    "get_backbone",
    "load_backbone",
    "resolve_backbones",
    "scan_data_folder",
]
