"""Frozen backbones: a registry entry built with its weights, mapping normalised images to features.

    spec = get_backbone("inception")
    backbone = load_backbone(spec, weights="imagenet", pool="avg")
    feats = backbone(backbone.preprocess(images_uint8))      # (N, 3, H, W) uint8 -> (N, 2048)

The feature of every model is the input of its final Linear (timm's "pre-logits"), pooled as
asked; the forward stops as soon as it is computed, so no classifier runs. Pretrained weights load
only through torchvision's weights enums and cache ($TORCH_HOME/hub/checkpoints) or timm's
(Hugging Face's cache), never silently replaced by random ones.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import torch
import torch.fx
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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
        return f"random:seed={seed}"
    if (path := finetuned_path(weights)) is not None:
        return f"finetuned:sha256={file_sha256(path)}"
    if spec.source == "timm":
        return f"timm:{_timm_name(spec)}"
    return f"imagenet:{weights_enum(spec, weights)}"


def weights_file(spec: BackboneSpec, weights: str) -> str:
    """The checkpoint's file name, recorded beside the label."""
    if weights == "random":
        return ""
    if (path := finetuned_path(weights)) is not None:
        return path.name
    if spec.source == "timm":
        return timm_cache_folder(spec)[1]
    return checkpoint_path(spec, weights).name


def preprocessing(spec: BackboneSpec, weights: str) -> Preprocessing:
    """Mean, std and sizes from the weights themselves: torchvision's enum, timm's pretrained config, or
    what a fine-tuned checkpoint was trained with."""
    if (path := finetuned_path(weights)) is not None:
        saved = load_finetuned(path, spec)["preprocessing"]
        base = preprocessing(spec, "imagenet")
        return Preprocessing(tuple(saved["mean"]), tuple(saved["std"]), int(saved["image_size"]), base.min_size)
    if spec.source == "timm":
        import timm

        cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(_timm_name(spec)).to_dict())
        return Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), int(cfg["input_size"][-1]), 1)
    enum = weights_enum(spec, weights)
    transform = enum.transforms()
    return Preprocessing(tuple(transform.mean), tuple(transform.std), int(transform.crop_size[0]),
                         int(min(enum.meta.get("min_size", (1, 1)))))


def default_image_size(spec: BackboneSpec, weights: str) -> int:
    """The size a backbone runs at when --image-size is not given: a fine-tuned checkpoint's own, else the
    registry's (299 for the book's three), else the weights' native size."""
    if finetuned_path(weights) is None and spec.image_size:
        return spec.image_size
    return preprocessing(spec, weights).native_size


def build_model(spec: BackboneSpec, weights: str = "imagenet", seed: int = 0) -> nn.Module:
    """The model with pretrained weights through its library's own cache, a fine-tuned checkpoint's, or
    seeded random ones."""
    if spec.source == "timm":
        return _build_timm(spec, weights, seed)
    if (path := finetuned_path(weights)) is not None:
        saved = load_finetuned(path, spec)
        with _parameters_on_meta(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torchvision.models.get_model(spec.builder, weights=None, num_classes=len(saved["classes"]),
                                                 **saved["builder_kwargs"])
        model.load_state_dict(saved["state_dict"], assign=True)
        return model
    if weights == "random":
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torchvision's notes on future default inits
            return torchvision.models.get_model(spec.builder, weights=None, **spec.random_kwargs)
    enum = weights_enum(spec, weights)
    state = load_checkpoint(spec, weights)
    # torchvision's builder sets the architecture the weights need (classes, Inception's
    # transform_input, ViT's image size) and loads them; here it gets the state already in
    # memory, into parameters on the meta device, and the state's tensors are then put in their place
    with _parameters_on_meta(), mock.patch.object(type(enum), "get_state_dict", lambda *a, **k: state), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        model = torchvision.models.get_model(spec.builder, weights=enum)
    model.load_state_dict(state, assign=True)
    return model


def load_checkpoint(spec: BackboneSpec, weights: str = "imagenet") -> dict[str, torch.Tensor]:
    """A torchvision checkpoint from the hub cache (downloaded once if missing), never unpickling code."""
    enum = weights_enum(spec, weights)
    path = checkpoint_path(spec, weights)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no hub cache yet
            torch.hub.download_url_to_file(enum.url, str(path), hash_prefix=_hash_prefix(path))
        except Exception as err:  # noqa: BLE001 - urllib's errors, a hash mismatch: the file is not to be had
            raise WeightsUnavailableError(_missing_message(spec, path, enum.url, err)) from err
    # torchvision's own loader unpickles with weights_only=False; a tampered file could run code
    return read_torch_file(path, f"a loadable checkpoint for {spec.name}", WeightsUnavailableError,
                           "delete it and run again to download it afresh, or replace it with a good copy")


def _hash_prefix(path: Path) -> str | None:
    """torchvision's file names end in the first digits of their SHA-256: resnet34-b627a593.pth."""
    stem = path.name.split(".")[0]
    return stem.rsplit("-", 1)[1] if "-" in stem else None


def _missing_message(spec: BackboneSpec, path: Path, url: str, err: Exception) -> str:
    return (f"pretrained weights for {spec.name} are not cached and could not be downloaded ({err}).\n"
            f"  missing file: {path.name}\n  folder:       {path.parent}\n"
            f"On an online machine run the same command once (it downloads {url}), or copy {path.name} "
            f"into that folder, or pass --weights random for a smoke run.")


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """New parameters go to the meta device: no memory, and initialising them costs nothing.

    A checkpoint overwrites every parameter anyway; load_state_dict(assign=True) then puts its
    tensors in their place. Builders that compute with tensors (RegNet's widths) still work,
    since only parameters move, unlike under `with torch.device("meta")`.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _build_timm(spec: BackboneSpec, weights: str, seed: int) -> nn.Module:
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
            f"  missing file: {name}\n  folder:       {folder}\n"
            f"On an online machine run the same command once (timm downloads them from the Hugging Face Hub), "
            f"or copy that folder into the cache (set HF_HOME to use another one), or pass --weights random."
        ) from err


def pool_features(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) for avg/max, unchanged for none."""
    if pool == "avg":
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
    if pool == "max":
        return torch.flatten(F.adaptive_max_pool2d(fmap, 1), 1)
    if pool == "none":
        return fmap
    raise ConfigError(f"pool must be one of {POOLS}, not {pool!r}")


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d that alone feeds it; returns how many.

    Same function up to float rounding (~1e-6 relative), one memory pass less per pair: about 6% faster
    in fp32 and 20% in bf16 on a CPU. The graph is traced once, only to find the pairs; the modules
    are changed in place, so named layers (and hooks on them) stay where they were. A model that
    torch.fx cannot trace is left as it is.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - tracing is an optimisation, never a requirement
        log.debug("not folding batch norms of %s: %s", type(model).__name__, err)
        return 0
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if (
            isinstance(modules.get(node.target), nn.BatchNorm2d)
            and isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
        ):
            fused = fuse_conv_bn_eval(modules[source.target], modules[node.target])
            model.set_submodule(source.target, fused)
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


class _FeatureReady(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


class FrozenBackbone(nn.Module):
    """A frozen model mapping normalised images to the input of its own final Linear (or its map, pooled)."""

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
        fold_batchnorm(self.model)
        self._captured: torch.Tensor | None = None
        self.is_map = pool != "avg" or spec.avg_from_map
        if spec.source == "timm":
            self.layer = "forward_features" if self.is_map else "forward_head(pre_logits=True)"
        elif self.is_map:
            self.layer, side = map_layer(spec, self.model)
            hook = self._capture_output if side == "output" else self._capture_input
            getattr(self.model.get_submodule(self.layer), f"register_forward{'' if side == 'output' else '_pre'}_hook")(hook)
        else:
            self.layer = final_linear(self.model)
            self.model.get_submodule(self.layer).register_forward_pre_hook(self._capture_input)

    def _capture_output(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._captured = output
        raise _FeatureReady

    def _capture_input(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._captured = inputs[0]
        raise _FeatureReady

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float, channels_last for faster convolutions."""
        return normalize(images, self.mean, self.std)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.source == "timm":
            fmap = self.model.forward_features(x)
            if not self.is_map:
                return self.model.forward_head(fmap, pre_logits=True)
            if fmap.ndim != 4 or fmap.shape[1] != self.model.num_features:
                raise ConfigError(f"{self.spec.name} has no (N, C, H, W) map before its head; use --pool avg")
            return fmap
        try:
            self.model(x)
        except _FeatureReady:
            pass
        captured, self._captured = self._captured, None
        return captured

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, H, W) -> (N, D), or (N, C, H', W') with pool none."""
        captured = self._run(x)
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

    Models are built with their parameters on the meta device: no memory, no initialisation (still
    about 0.1 s each: once per process).
    """
    names = [*BOOK, *(name for name in torchvision_models() if name not in {spec.builder for spec in BOOK.values()})]
    entries = []
    for name in names:
        spec = get_backbone(name)
        with _parameters_on_meta(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(spec.builder, weights=None)
        try:
            dim: int | None = model.get_submodule(final_linear(model)).in_features
        except ConfigError:
            dim = None
        size = default_image_size(spec, "imagenet")
        enum = torchvision.models.get_model_weights(spec.builder)
        entries.append(CatalogEntry(spec.name, dim, size, tuple(member.name for member in enum)))
    return tuple(entries)
