"""Frozen backbones: a registry entry built with its weights, mapping normalised images to features.

    spec = get_backbone("inception")
    backbone = load_backbone(spec, weights="imagenet", pool="avg")
    feats = backbone(backbone.preprocess(images_uint8))      # (N, 3, H, W) uint8 -> (N, 2048)

The feature of every model is the input of its final Linear (timm's "pre-logits"), pooled as
asked; the forward is cut where the feature is, so no classifier runs. Pretrained weights load
only through torchvision's weights enums and cache ($TORCH_HOME/hub/checkpoints) or timm's
(Hugging Face's cache), never silently replaced by random ones. What differs between the two
libraries lives in one class each, TorchvisionSource and TimmSource, chosen by the entry's source.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.fx
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode

from .checkpoint import file_sha256, finetuned_path, load_finetuned, read_torch_file
from .config import POOLS
from .errors import ConfigError, WeightsUnavailableError
from .registry import BOOK, BackboneSpec, get_backbone, torchvision_models

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """What a model's weights expect of its input."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int  # the square size its weights were evaluated at: the default --image-size
    min_size: int  # smaller inputs shrink to an empty map somewhere inside


def weights_enum(spec: BackboneSpec, weights: str) -> Any:
    """The torchvision weights enum member that `--weights` names ('imagenet' = the registry's choice)."""
    enum = torchvision.models.get_model_weights(spec.builder)
    member = spec.weights if weights in ("imagenet", "random") else weights
    try:
        return enum[member]
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise ConfigError(f"{spec.name} has no weights {member!r}; use imagenet, random or one of {names}") from None


def checkpoint_path(spec: BackboneSpec, weights: str = "imagenet") -> Path:
    """Where torchvision caches (and looks for) a backbone's pretrained checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum(spec, weights).url)


def timm_cache_folder(spec: BackboneSpec) -> tuple[Path, str]:
    """(folder, file) where timm's pretrained weights for spec live in the Hugging Face cache."""
    import timm
    from huggingface_hub import constants

    cfg = timm.models.get_pretrained_cfg(_timm_name(spec))
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{_timm_name(spec)}"
    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}", "model.safetensors"


def _timm_name(spec: BackboneSpec) -> str:
    return f"{spec.builder}.{spec.weights}" if spec.weights not in ("", "DEFAULT") else spec.builder


def weights_label(spec: BackboneSpec, weights: str, seed: int) -> str:
    """What the cache records about the weights, so random or fine-tuned features are never taken for
    pretrained ones, and a changed fine-tuned checkpoint makes its features stale."""
    if weights == "random":
        return f"{RANDOM_LABEL}{seed}"
    if (path := finetuned_path(weights)) is not None:
        return f"finetuned:sha256={file_sha256(path)}"
    return source_of(spec).weights_label(spec, weights)


RANDOM_LABEL = "random:seed="  # weights_label's prefix for seeded random weights; the seed follows


def weights_from_label(spec: BackboneSpec, label: str, checkpoints: Sequence[Path] = ()) -> tuple[str, int]:
    """(weights, seed) that weights_label turns into `label`: how features recorded in a cache are made again.

    The candidates are random (with the label's seed), imagenet, every weights name of the model and the
    fine-tuned `checkpoints` given; the one whose label is `label` is the answer, so weights_label stays
    the only rule.
    """
    seed = int(label[len(RANDOM_LABEL):]) if label.startswith(RANDOM_LABEL) else 0
    names = [m.name for m in torchvision.models.get_model_weights(spec.builder)] if spec.source == "torchvision" else []
    for weights in ("random", "imagenet", *names, *(str(p) for p in checkpoints)):
        if weights_label(spec, weights, seed) == label:
            return weights, seed
    where = f" (looked in {', '.join(sorted({str(Path(p).parent) for p in checkpoints}))})" if checkpoints else ""
    raise WeightsUnavailableError(f"no weights of {spec.name} are recorded as {label!r}{where}; a fine-tuned "
                                  f"checkpoint must be the very file the features were extracted with")


def weights_file(spec: BackboneSpec, weights: str) -> str:
    """The checkpoint's file name, recorded beside the label."""
    if weights == "random":
        return ""
    if (path := finetuned_path(weights)) is not None:
        return path.name
    return source_of(spec).weights_file(spec, weights)


def preprocessing(spec: BackboneSpec, weights: str) -> Preprocessing:
    """Mean, std and sizes from the weights themselves (their library's own record), or what a fine-tuned
    checkpoint was trained with."""
    if (path := finetuned_path(weights)) is not None:
        saved = load_finetuned(path, spec)["preprocessing"]
        base = preprocessing(spec, "imagenet")
        return Preprocessing(tuple(saved["mean"]), tuple(saved["std"]), int(saved["image_size"]), base.min_size)
    return source_of(spec).preprocessing(spec, weights)


def default_image_size(spec: BackboneSpec, weights: str) -> int:
    """The size a backbone runs at when --image-size is not given: a fine-tuned checkpoint's own, else the
    registry's (299 for the book's three), else the weights' native size."""
    if finetuned_path(weights) is None and spec.image_size:
        return spec.image_size
    return preprocessing(spec, weights).native_size


def build_model(spec: BackboneSpec, weights: str = "imagenet", seed: int = 0) -> nn.Module:
    """The model with pretrained weights through its library's own cache, a fine-tuned checkpoint's, or
    seeded random ones."""
    return source_of(spec).build(spec, weights, seed)


# said once however many files are missing: the files and their folder are named above it
TORCH_HUB_ADVICE = ("Copy the missing files into that folder (download them from the addresses shown), or set\n"
                    "TORCH_HOME to a folder whose hub/checkpoints holds them; online, the same command downloads them.\n"
                    "--weights random makes a smoke run without them.")


def load_checkpoint(spec: BackboneSpec, weights: str = "imagenet") -> dict[str, torch.Tensor]:
    """A torchvision checkpoint from the hub cache (downloaded once if missing), never unpickling code."""
    enum = weights_enum(spec, weights)
    path = checkpoint_path(spec, weights)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no hub cache yet
            torch.hub.download_url_to_file(enum.url, str(path), hash_prefix=_hash_prefix(path))
        except Exception as err:  # noqa: BLE001 - urllib's errors, a hash mismatch: the file is not to be had
            raise WeightsUnavailableError(
                f"pretrained weights for {spec.name} are not cached and could not be downloaded ({err}).\n"
                f"  missing file: {path.name} ({enum.url})\n  folder:       {path.parent}", TORCH_HUB_ADVICE) from err
    # torchvision's own loader unpickles with weights_only=False; a tampered file could run code
    return read_torch_file(path, f"a loadable checkpoint for {spec.name}", WeightsUnavailableError,
                           "delete it and run again to download it afresh, or replace it with a good copy")


def _hash_prefix(path: Path) -> str | None:
    """torchvision's file names end in the first digits of their SHA-256: resnet34-b627a593.pth."""
    stem = path.name.split(".")[0]
    return stem.rsplit("-", 1)[1] if "-" in stem else None


def pool_features(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) for avg/max, unchanged for none."""
    if pool == "avg":
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
    if pool == "max":
        return torch.flatten(F.adaptive_max_pool2d(fmap, 1), 1)
    if pool == "none":
        return fmap
    raise ConfigError(f"pool must be one of {POOLS}, not {pool!r}")


def fold_batchnorm(model: nn.Module, graph: torch.fx.Graph | None = None) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d that alone feeds it; returns how many.

    Same function up to float rounding (~1e-6 relative), one memory pass less per pair: about 6% faster
    in fp32 and 20% in bf16 on a CPU. graph, the model's torch.fx graph, is read only to find the pairs
    (traced here when not given); each Conv2d takes the folded weights in place and its BatchNorm2d
    becomes an Identity, so named layers (and hooks on them) stay where they were. A model that torch.fx
    cannot trace is left as it is.
    """
    if graph is None:
        try:
            graph = torch.fx.Tracer().trace(model)
        except Exception as err:  # noqa: BLE001 - tracing is an optimisation here, never a requirement
            log.debug("not folding batch norms of %s: %s", type(model).__name__, err)
            return 0
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        bn, source = modules.get(node.target), node.args[0]
        if (
            isinstance(bn, nn.BatchNorm2d)
            and not bn.training
            and isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(conv := modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
        ):
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                          bn.eps, bn.weight, bn.bias)
            model.set_submodule(node.target, nn.Identity())
            folded += 1
    return folded


def final_linear(model: nn.Module) -> str:
    """The name of the Linear that produces the logits: the last one the model registers."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no final Linear layer (its classifier is something else), "
                          f"so it has no feature in cnnfeat's sense; choose another backbone")
    return names[-1]


def map_layer(spec: BackboneSpec, model: nn.Module) -> tuple[str, str]:
    """(module, "output" or "input") where the spatial map before the model's global pooling is."""
    if spec.map_layer:
        return spec.map_layer, "output"
    pools = [name for name, module in model.named_modules()
             if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))]
    if not pools:
        raise ConfigError(f"{spec.name} has no spatial map before its head (no global average pooling), "
                          f"so --pool max and --pool none do not apply to it; use --pool avg")
    return pools[-1], "input"


class Source(Protocol):
    """What backbones.py asks of a model library; the registry entry's `source` names which one."""

    def build(self, spec: BackboneSpec, weights: str, seed: int) -> nn.Module: ...

    def weights_label(self, spec: BackboneSpec, weights: str) -> str: ...

    def weights_file(self, spec: BackboneSpec, weights: str) -> str: ...

    def preprocessing(self, spec: BackboneSpec, weights: str) -> Preprocessing: ...

    def feature_extractor(self, spec: BackboneSpec, model: nn.Module, is_map: bool) -> tuple[nn.Module, str]:
        """(a module running the frozen eval-mode model from normalised images only as far as its feature, or
        its map with is_map; where that is taken, recorded in the cache as "layer"), batch norms folded."""
        ...


class _CallTracer(torch.fx.Tracer):
    """torch.fx's tracer, noting the nodes that go into and come out of the last call of one module."""

    def __init__(self, module: str) -> None:
        super().__init__()
        self.module = module
        self.ends: dict[str, torch.fx.Node] = {}

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        output = super().call_module(m, forward, args, kwargs)
        if self.path_of_module(m) == self.module:
            self.ends = {"input": args[0].node, "output": output.node}
        return output


class _AllocateOnMeta(TorchFunctionMode):
    """torch.device("meta") for the functions that allocate layers' parameters and buffers only (torch.empty,
    zeros, ones, full): a builder that computes with tensors, as RegNet's does its widths (then `.tolist()`),
    gets real ones for that, and its layers take no memory and no initialisation. Computed buffers (Swin's
    relative position index) come out real and small; the state loaded with assign=True replaces them."""

    ALLOCATORS = frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full})

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.ALLOCATORS and kwargs.get("device") is None:
            kwargs = {**kwargs, "device": "meta"}
        return func(*args, **kwargs)


class TorchvisionSource:
    """torchvision.models: weights enums, the hub cache, the forward cut with torch.fx."""

    def weights_label(self, spec: BackboneSpec, weights: str) -> str:
        return f"imagenet:{weights_enum(spec, weights)}"

    def weights_file(self, spec: BackboneSpec, weights: str) -> str:
        return checkpoint_path(spec, weights).name

    def preprocessing(self, spec: BackboneSpec, weights: str) -> Preprocessing:
        enum = weights_enum(spec, weights)
        transform = enum.transforms()
        return Preprocessing(tuple(transform.mean), tuple(transform.std), int(transform.crop_size[0]),
                             int(min(enum.meta.get("min_size", (1, 1)))))

    def build(self, spec: BackboneSpec, weights: str, seed: int) -> nn.Module:
        if (path := finetuned_path(weights)) is not None:
            saved = load_finetuned(path, spec)
            kwargs = {"num_classes": len(saved["classes"]), **saved["builder_kwargs"]}
            return self.filled(spec, kwargs, saved["state_dict"])
        kwargs = self.builder_kwargs(spec, weights_enum(spec, weights))
        if weights == "random":
            torch.manual_seed(seed)
            return self.architecture(spec, kwargs, empty=False)
        return self.filled(spec, kwargs, load_checkpoint(spec, weights))

    @staticmethod
    def builder_kwargs(spec: BackboneSpec, enum: Any) -> dict[str, Any]:
        """What torchvision's builder derives from these weights: their architecture, with or without them."""
        return {"num_classes": len(enum.meta["categories"]), **spec.builder_kwargs(enum.meta)}

    @staticmethod
    def architecture(spec: BackboneSpec, kwargs: dict[str, Any], *, empty: bool) -> nn.Module:
        """torchvision's builder without weights. empty: its parameters and buffers allocated on the meta device
        (no memory, no initialisation), for a state to fill."""
        with _AllocateOnMeta() if empty else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torchvision's notes on future default inits
            return torchvision.models.get_model(spec.builder, weights=None, **kwargs)

    def filled(self, spec: BackboneSpec, kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
        """The empty architecture with state's tensors put in place of its parameters and buffers."""
        model = self.architecture(spec, kwargs, empty=True)
        model.load_state_dict(state, assign=True)
        return model

    def feature_extractor(self, spec: BackboneSpec, model: nn.Module, is_map: bool) -> tuple[nn.Module, str]:
        """The model's forward traced once, its batch norms folded, and cut at the feature: the output of the
        map layer, or the input of the global pool or of the final Linear.

        torchvision's create_feature_extractor makes the same cut, but traces twice (train and eval) and
        names every node as it goes: for DenseNet-121 that alone took longer than the whole build.
        """
        layer, end = map_layer(spec, model) if is_map else (final_linear(model), "input")
        tracer = _CallTracer(layer)
        graph = tracer.trace(model)
        if not tracer.ends:
            raise ConfigError(f"{spec.name}'s forward never calls {layer!r}, so its feature cannot be taken "
                              f"there; correct map_layer in its registry entry")
        fold_batchnorm(model, graph)
        next(node for node in reversed(graph.nodes) if node.op == "output").args = (tracer.ends[end],)
        graph.owning_module = model  # whose modules dead-code elimination asks whether they are pure
        graph.eliminate_dead_code()  # the classifier, and whatever only it needed
        return torch.fx.GraphModule(model, graph, class_name=f"{type(model).__name__}Features"), layer


class _TimmFeatures(nn.Module):
    """A timm model's own split of its forward: forward_features (the map), then forward_head's pre-logits."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, is_map: bool) -> None:
        super().__init__()
        self.name, self.model, self.is_map = spec.name, model, is_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.model.forward_features(x)
        if not self.is_map:
            return self.model.forward_head(fmap, pre_logits=True)
        if fmap.ndim != 4 or fmap.shape[1] != self.model.num_features:
            raise ConfigError(f"{self.name} has no (N, C, H, W) map before its head; use --pool avg")
        return fmap


class TimmSource:
    """timm: pretrained configs and weights in the Hugging Face cache; the forward split by timm itself."""

    def weights_label(self, spec: BackboneSpec, weights: str) -> str:
        return f"timm:{_timm_name(spec)}"

    def weights_file(self, spec: BackboneSpec, weights: str) -> str:
        return timm_cache_folder(spec)[1]

    def preprocessing(self, spec: BackboneSpec, weights: str) -> Preprocessing:
        import timm

        cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(_timm_name(spec)).to_dict())
        return Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), int(cfg["input_size"][-1]), 1)

    def build(self, spec: BackboneSpec, weights: str, seed: int) -> nn.Module:
        import timm

        if weights not in ("imagenet", "random"):
            raise ConfigError(f"{spec.name}: --weights takes imagenet or random for timm models; pick the "
                              f"pretrained tag in the name instead (timm:{spec.builder}.<tag>)")
        if weights == "random":
            torch.manual_seed(seed)
            return timm.create_model(_timm_name(spec), pretrained=False)
        try:
            return timm.create_model(_timm_name(spec), pretrained=True)
        except (OSError, RuntimeError) as err:  # huggingface_hub's LocalEntryNotFoundError is an OSError
            folder, name = timm_cache_folder(spec)
            raise WeightsUnavailableError(
                f"pretrained weights for {spec.name} are not cached and could not be downloaded ({err}).\n"
                f"  missing file: {name}\n  folder:       {folder}",
                "Copy the missing folders into the Hugging Face cache (or set HF_HOME to a cache that has them); "
                "on an online machine timm downloads them from the Hugging Face Hub. --weights random makes a "
                "smoke run without them.") from err

    def feature_extractor(self, spec: BackboneSpec, model: nn.Module, is_map: bool) -> tuple[nn.Module, str]:
        fold_batchnorm(model)
        return _TimmFeatures(spec, model, is_map), "forward_features" if is_map else "forward_head(pre_logits=True)"


SOURCES: dict[str, Source] = {"torchvision": TorchvisionSource(), "timm": TimmSource()}


def source_of(spec: BackboneSpec) -> Source:
    """The library a registry entry's model and weights come from."""
    if spec.source not in SOURCES:
        raise ConfigError(f"{spec.name} names source {spec.source!r}; sources are {', '.join(SOURCES)}")
    return SOURCES[spec.source]


class FrozenBackbone(nn.Module):
    """A frozen model mapping normalised images to the input of its own final Linear (or its map, pooled).

    `model` is the whole network, frozen, batch norms folded; `extractor` runs its modules only as far as
    the feature, so nothing after it (no classifier) is computed.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, pool: str, prep: Preprocessing) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS}, not {pool!r}")
        self.spec, self.model, self.pool = spec, model.eval(), pool
        for param in self.model.parameters():
            param.requires_grad_(False)
        if getattr(self.model, "transform_input", False):
            # Inception/GoogLeNet re-normalise ImageNet-normalised input to [-1, 1] channel by channel
            # (which also undoes channels_last): normalising to [-1, 1] directly is the same function
            self.model.transform_input = False
            prep = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), prep.native_size, prep.min_size)
        self.prep = prep
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1), persistent=False)
        self.is_map = pool != "avg" or spec.avg_from_map
        self.extractor, self.layer = source_of(spec).feature_extractor(spec, self.model, self.is_map)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float, channels_last for faster convolutions."""
        return normalize(images, self.mean, self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, H, W) -> (N, D), or (N, C, H', W') with pool none."""
        captured = self.extractor(x)
        if not self.is_map:
            return captured.flatten(1)
        return pool_features(F.relu(captured) if self.spec.relu_on_map else captured, self.pool)

    def feature_shape(self, image_size: int) -> tuple[int, ...]:
        """Shape of one image's stored feature, found by a dry run that also proves the size usable."""
        if image_size < self.prep.min_size:
            raise ConfigError(f"image_size {image_size} is too small for {self.spec.name}; it needs at least "
                              f"{self.prep.min_size} (its weights' own size is {self.prep.native_size}: pass "
                              f"--image-size {self.prep.native_size} or leave --image-size out)")
        probe = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8, device=self.mean.device)
        try:
            with torch.inference_mode():
                return tuple(self(self.preprocess(probe)).shape[1:])
        except (RuntimeError, AssertionError, ValueError) as err:
            raise ConfigError(f"{self.spec.name} cannot take {image_size} px images ({err}); it was trained at "
                              f"{self.prep.native_size} px: pass --image-size {self.prep.native_size} or leave "
                              f"--image-size out") from err

    def cast_weights(self, dtype: torch.dtype | None) -> None:
        """Store the weights of convolutions and Linears in the autocast dtype once.

        Autocast caches its casts only for weights that require grad, so frozen ones would be cast
        again on every forward; pre-cast weights give the same numbers (the same rounding) without that.
        """
        if dtype is None:
            return
        for module in self.model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.to(dtype)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, (x / 255 - mean) / std, channels_last."""
    x = images.float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)


def load_backbone(spec: BackboneSpec, *, weights: str = "imagenet", pool: str = "avg", seed: int = 0) -> FrozenBackbone:
    """Build, load and freeze one backbone; its build time is logged."""
    started = time.perf_counter()
    backbone = FrozenBackbone(spec, build_model(spec, weights, seed), pool, preprocessing(spec, weights))
    log.debug("built %s in %.2f s", spec.name, time.perf_counter() - started)
    return backbone


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    feature_dim: int | None  # the input size of its final Linear; None: it has none, cnnfeat cannot take it
    image_size: int  # what --image-size defaults to for it
    weights: tuple[str, ...]  # what --weights may name besides imagenet and random


@functools.cache
def catalog() -> tuple[CatalogEntry, ...]:
    """The book's three, then every other torchvision classification model, with what matters for choosing.

    Models are built empty, their allocations on the meta device (about 0.1 s each): once per process.
    """
    names = [*BOOK, *(name for name in torchvision_models() if name not in {spec.builder for spec in BOOK.values()})]
    entries = []
    for name in names:
        spec = get_backbone(name)
        enum = weights_enum(spec, "imagenet")
        model = TorchvisionSource.architecture(spec, TorchvisionSource.builder_kwargs(spec, enum), empty=True)
        try:
            dim: int | None = model.get_submodule(final_linear(model)).in_features
        except ConfigError:
            dim = None
        size = default_image_size(spec, "imagenet")
        entries.append(CatalogEntry(spec.name, dim, size, tuple(member.name for member in type(enum))))
    return tuple(entries)
