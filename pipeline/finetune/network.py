"""The network fine-tuning trains: a torchvision architecture with a new classifier, and which blocks learn.

    model = new_model(spec, "imagenet", n_classes=10, seed=0)
    trained = chosen_blocks(spec, model, "layer4")          # ["layer4", "fc"]: the classifier always trains
    groups = freeze(model, trained, every=False)             # (block, parameters) top first, for per-block lrs
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torchvision
from torch import nn

from features import BackboneSpec, ConfigError, build_model, did_you_mean, final_linear

from .config import CLASSIFIER


def blocks(spec: BackboneSpec, model: nn.Module) -> list[str]:
    """The units --train-layers names, bottom to top, the classifier last: the registry's, else the model's
    top-level children with parameters, Sequential containers opened one level."""
    if spec.blocks:
        return list(spec.blocks)
    names = []
    for name, child in model.named_children():
        children = list(child.named_children()) if isinstance(child, nn.Sequential) else [("", child)]
        names += [f"{name}.{sub}" if sub else name for sub, part in children if any(True for _ in part.parameters())]
    return names


def chosen_blocks(spec: BackboneSpec, model: nn.Module, train_layers: str) -> list[str]:
    """The blocks to unfreeze, always with the (new) classifier; `all` is every parameter, `classifier` the
    classifier's block alone, whatever the model calls it (fc, classifier, heads, ...)."""
    available = blocks(spec, model)
    head = _block_of(final_linear(model), available) or available[-1]
    if train_layers.strip() == "all":
        return available
    asked = [head if n.strip() == CLASSIFIER else n.strip() for n in train_layers.split(",") if n.strip()]
    unknown = [n for n in asked if n not in available]
    if unknown or not asked:
        hint = did_you_mean(unknown[0], available) if unknown else ""
        raise ConfigError(f"--train-layers {train_layers!r}: {spec.name} has no block "
                          f"{', '.join(unknown) or '(none given)'}{hint}; use all, {CLASSIFIER} or a comma list of "
                          f"{', '.join(available)} (bottom to top)", setting="train_layers")
    return [n for n in available if n in asked or n == head]


def _block_of(parameter: str, names: Sequence[str]) -> str | None:
    return next((b for b in names if parameter == b or parameter.startswith(b + ".")), None)


def builder_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    """What torchvision's builder needs besides num_classes for this architecture (the registry's, for its own
    weights); saved in the checkpoint. The new classifier is initialised as torchvision does."""
    meta = torchvision.models.get_model_weights(spec.builder)[spec.weights].meta
    kwargs = {k: v for k, v in spec.builder_kwargs(meta).items() if k != "init_weights"}
    if "aux_logits" in kwargs:
        kwargs["aux_logits"] = False  # auxiliary classifiers only help from scratch on ImageNet
    return kwargs


def new_model(spec: BackboneSpec, weights: str, n_classes: int, seed: int) -> nn.Module:
    """The architecture with n_classes outputs, its classifier initialised as torchvision does, every other
    weight from `weights` (pretrained, or seeded random)."""
    if spec.source != "torchvision":
        raise ConfigError(f"finetune trains torchvision models; {spec.name} is a {spec.source} model")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(spec.builder, weights=None, num_classes=n_classes, **builder_kwargs(spec))
    if weights == "random":
        return model
    head = final_linear(model)
    own = model.state_dict()
    state = {k: v for k, v in build_model(spec, weights, seed).state_dict().items()
             if k in own and _block_of(k, [head]) is None}
    missing = [k for k in own if k not in state and _block_of(k, [head]) is None]
    if missing:
        raise ConfigError(f"the {weights} weights of {spec.name} lack {', '.join(missing[:3])}; they do not fit its "
                          f"torchvision architecture")
    model.load_state_dict(state, strict=False)
    return model


def freeze(model: nn.Module, trained: Sequence[str], every: bool) -> list[tuple[str, list[nn.Parameter]]]:
    """Freeze all but the trained blocks; (block, parameters) top first, for per-block learning rates.
    With `every`, parameters outside any block (a stem) train too, as the lowest group."""
    groups: dict[str, list[nn.Parameter]] = {b: [] for b in reversed(trained)}
    stem: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        block = _block_of(name, trained)
        param.requires_grad_(block is not None or every)
        if block is not None:
            groups[block].append(param)
        elif every:
            stem.append(param)
    found = [(b, ps) for b, ps in groups.items() if ps]
    return found + ([("stem", stem)] if stem else [])


def set_modes(model: nn.Module, trained: Sequence[str], every: bool, bn_train: bool) -> None:
    """model.train(), but BatchNorm in frozen blocks (and, without bn_train, everywhere) keeps its statistics."""
    model.train()
    for name, module in model.named_modules():
        unfrozen = every or _block_of(name, trained) is not None
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not (bn_train and unfrozen):
            module.eval()
