"""Which backbones cnnfeat knows, as data: the book's three by name, and any torchvision or timm model.

    get_backbone("inception")          # the book's Inception-v3: its map taken at Mixed_7c, 299 px
    get_backbone("convnext_tiny")      # any classification model of torchvision.models
    get_backbone("timm:resnet50.a1_in1k")
    resolve_backbones("all")           # the book's three

Every model's feature is the input of its final Linear (what its classifier consumes). The book's
three take it where the book did, as the output of their spatial map, pooled by cnnfeat; any other
model as the input of that Linear. What a torchvision family needs besides the defaults is data
here (FAMILIES), found by the builder's name. Imports no torch: the CLI's `info` and `--help` use
these names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError, did_you_mean

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class FromMeta:
    """A builder argument read from the weights enum's meta: meta[key], or meta[key][index]."""

    key: str
    index: int | None = None

    def read(self, meta: Mapping[str, Any]) -> Any:
        return meta[self.key] if self.index is None else meta[self.key][self.index]


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # canonical name, also the HDF5 dataset name
    aliases: tuple[str, ...] = ()
    source: str = "torchvision"  # where the model and its weights come from: torchvision or timm
    model: str = ""  # torchvision builder (torchvision.models.get_model) or timm model name; "" = name
    weights: str = "DEFAULT"  # what --weights imagenet loads: a torchvision weights enum member or a timm tag
    map_layer: str = ""  # module whose output is the spatial map; "": the input of the model's global avg pool
    relu_on_map: bool = False  # the model's forward applies F.relu between map_layer and its pooling (DenseNet)
    avg_from_map: bool = False  # --pool avg averages map_layer's output, as the book did, instead of taking
    # the final Linear's input
    image_size: int | None = None  # default --image-size; None: the weights' native size
    blocks: tuple[str, ...] = ()  # what `finetune --train-layers` unfreezes, bottom to top (the classifier
    # last); (): the model's top-level children, its Sequential containers opened one level
    weights_kwargs: Mapping[str, Any] = field(default_factory=dict)  # what torchvision's builder sets from
    # a weights enum besides num_classes (constants, or FromMeta): pretrained and random builds alike

    @property
    def builder(self) -> str:
        return self.model or self.name

    def builder_kwargs(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """weights_kwargs for the weights whose enum meta this is."""
        return {k: v.read(meta) if isinstance(v, FromMeta) else v for k, v in self.weights_kwargs.items()}


# What a torchvision family needs besides the defaults, by builder name prefix (the first that matches).
_AUX_CLASSIFIERS = {"transform_input": True, "aux_logits": True,
                    "init_weights": False}  # also spares random builds a slow truncated-normal init
FAMILIES: dict[str, dict[str, Any]] = {
    # their forward pools with a function, not a module: where their map is
    "densenet": {"map_layer": "features", "relu_on_map": True},
    "mobilenet_v2": {"map_layer": "features"},
    "mnasnet": {"map_layer": "layers"},
    "shufflenet_v2": {"map_layer": "conv5"},
    # what their builders set from the weights (torchvision's _ovewrite_named_param calls)
    "inception_v3": {"weights_kwargs": _AUX_CLASSIFIERS},
    "googlenet": {"weights_kwargs": _AUX_CLASSIFIERS},
    "vit_": {"weights_kwargs": {"image_size": FromMeta("min_size", 0)}},
    "maxvit_": {"weights_kwargs": {"input_size": FromMeta("min_size")}},
}


def _torchvision_entry(name: str, **fields: Any) -> BackboneSpec:
    """An entry for a torchvision builder: its family's rules, then `fields`."""
    builder = fields.get("model") or name
    rules = next((rule for prefix, rule in FAMILIES.items() if builder.startswith(prefix)), {})
    return BackboneSpec(name, **{**rules, **fields})


# The book's three: features taken where the book hooked them, all at Inception's native 299 px.
BOOK: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _torchvision_entry("resnet34", aliases=("resnet",), weights="IMAGENET1K_V1", map_layer="layer4",
                           avg_from_map=True, image_size=299, blocks=("layer1", "layer2", "layer3", "layer4", "fc")),
        _torchvision_entry("inception", aliases=("inception_v3",), model="inception_v3", weights="IMAGENET1K_V1",
                           map_layer="Mixed_7c", avg_from_map=True, image_size=299,
                           blocks=("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                                   "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc")),
        _torchvision_entry("densenet121", aliases=("densenet",), weights="IMAGENET1K_V1", avg_from_map=True,
                           image_size=299,  # map_layer "features" and its ReLU: the densenet family's
                           blocks=tuple(f"features.{b}" for b in ("denseblock1", "transition1", "denseblock2",
                                                                  "transition2", "denseblock3", "transition3",
                                                                  "denseblock4", "norm5")) + ("classifier",)),
    )
}


def split_names(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c'], as users type them on a command line."""
    items = [names] if isinstance(names, str) else names
    return [n.strip() for item in items for n in item.split(",") if n.strip()]


def _book_spec(name: str) -> BackboneSpec | None:
    key = name.strip().lower()
    return next((spec for spec in BOOK.values() if key == spec.name or key in spec.aliases), None)


def registry_names(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """The names resolve_backbones gives, without asking a model library (no torch): 'all' as the book's three,
    a book alias as its name, any other name as it is spelled (torchvision's and timm's names are their own)."""
    found = []
    for name in split_names(names):
        found += list(BOOK) if name.lower() == "all" else [spec.name if (spec := _book_spec(name)) else name]
    return list(dict.fromkeys(found))


def get_backbone(name: str) -> BackboneSpec:
    """A book backbone by name or alias (any case), `timm:<model>`, or a torchvision classification model."""
    key = name.strip()
    if (spec := _book_spec(key)) is not None:
        return spec
    if key.lower().startswith(TIMM_PREFIX):
        return _timm_spec(key[len(TIMM_PREFIX):])
    return _torchvision_spec(key)


@functools.cache
def torchvision_models() -> tuple[str, ...]:
    """Every classification model of torchvision.models, by builder name."""
    import torchvision  # only here: the book's names resolve without it

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _torchvision_spec(name: str) -> BackboneSpec:
    available = torchvision_models()
    if name not in available:
        book = ", ".join(f"{s.name} ({', '.join(s.aliases)})" for s in BOOK.values())
        known = [*available, *BOOK, *(alias for s in BOOK.values() for alias in s.aliases)]
        raise ConfigError(
            f"unknown backbone {name!r}{did_you_mean(name, known)}; use one of the book's {book}, 'all' for those three, any torchvision "
            f"classification model ({len(available)}, e.g. convnext_tiny, efficientnet_v2_s, vit_b_16; "
            f"`cnnfeat backbones` lists them), or timm:<model name> with timm installed"
        )
    return _torchvision_entry(name)


def _timm_spec(model: str) -> BackboneSpec:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"backbone timm:{model} needs timm: pip install 'cnnfeat[timm]' (or pip install timm)") from None
    architecture, _, tag = model.partition(".")
    if not timm.is_model(architecture):
        raise ConfigError(f"timm has no model {architecture!r}; `python -c \"import timm; print(timm.list_models('{architecture[:4]}*'))\"` lists similar ones")
    return BackboneSpec(TIMM_PREFIX + model, source="timm", model=architecture, weights=tag)


def resolve_backbones(names: str | list[str] | tuple[str, ...]) -> list[BackboneSpec]:
    """'all' (the book's three), or a comma list of names; each once, the book's first in their order."""
    names = split_names(names)
    if not names:
        raise ConfigError("no backbone given; use a name such as resnet34, convnext_tiny or timm:resnet50, or 'all'")
    specs: dict[str, BackboneSpec] = {}
    for name in names:
        for spec in BOOK.values() if name.lower() == "all" else [get_backbone(name)]:
            specs.setdefault(spec.name, spec)
    book_first = [s for s in BOOK.values() if s.name in specs]
    return book_first + [s for s in specs.values() if s.name not in BOOK]
