from __future__ import annotations

import pytest
import torch

from features import BACKBONES, WeightsUnavailableError, checkpoint_path, get_backbone, load_backbone, resolve_backbones
from features.backbones import build_model, fold_batchnorm

SPECS = list(BACKBONES.values())
IDS = [spec.name for spec in SPECS]


def _images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_names_and_aliases_find_the_entry(spec):
    for name in (spec.name, spec.name.upper(), *spec.aliases):
        assert get_backbone(name) is spec


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'.*resnet34.*inception.*densenet121"):
        get_backbone("vgg16")


def test_resolve_backbones_all_and_lists():
    assert [s.name for s in resolve_backbones("all")] == IDS
    assert [s.name for s in resolve_backbones(["densenet", "resnet"])] == ["resnet34", "densenet121"]
    assert [s.name for s in resolve_backbones("inception_v3,resnet34")] == ["resnet34", "inception"]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_feature_is_the_classifier_input(spec, torch_home):
    """classifier(feature) reproduces the untouched torchvision model's logits, loaded the real ImageNet way."""
    backbone = load_backbone(spec, weights="imagenet")
    saved = torch.load(checkpoint_path(spec), weights_only=True)
    classifier = backbone.model.get_submodule(spec.classifier)
    assert torch.equal(classifier.weight, saved[f"{spec.classifier}.weight"])  # the cached file was loaded
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.model.training
    original = build_model(spec, "imagenet").eval()
    images = _images(96)
    with torch.inference_mode():
        features = backbone(images)
        logits = original(backbone.preprocess(images).contiguous())
    assert features.shape == (2, spec.feature_dim)
    torch.testing.assert_close(classifier(features), logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_batch_norms_are_folded_without_changing_the_function(spec):
    model = build_model(spec, "random").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        before = model(x)
        assert fold_batchnorm(model) > 0
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4 * before.abs().max().item())


def test_inception_keeps_transform_input_with_imagenet_weights(torch_home):
    assert load_backbone(get_backbone("inception"), weights="imagenet").model.transform_input
    assert load_backbone(get_backbone("inception"), weights="random").model.transform_input


@pytest.mark.parametrize(
    ("name", "map_shape"),
    [("resnet34", (512, 10, 10)), ("inception", (2048, 8, 8)), ("densenet121", (1024, 9, 9))],
)
def test_pool_none_keeps_the_map_that_avg_pooling_reduces(name, map_shape):
    """At 299 px the book's map shapes; the hook captures Mixed_7c for Inception."""
    spec = get_backbone(name)
    full = load_backbone(spec, weights="random", pool="none")
    assert full.feature_shape(299) == map_shape
    images = _images(299, n=1)
    with torch.inference_mode():
        fmap = full(images)
        pooled = load_backbone(spec, weights="random", pool="avg")(images)
        maxed = load_backbone(spec, weights="random", pool="max")(images)
    assert fmap.shape == (1, *map_shape)
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fmap.amax(dim=(2, 3)), maxed)


def test_offline_without_cached_weights_names_file_and_folder(empty_torch_home):
    spec = get_backbone("resnet34")
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model(spec, "imagenet")
    message = str(caught.value)
    assert "resnet34-b627a593.pth" in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--weights random" in message


def test_broken_cached_checkpoint_says_delete_it(empty_torch_home):
    spec = get_backbone("densenet121")
    path = checkpoint_path(spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="(?s)could not be loaded.*Delete it"):
        build_model(spec, "imagenet")


def test_random_weights_are_seeded():
    spec = get_backbone("resnet34")
    first, again, other = (build_model(spec, "random", seed) for seed in (3, 3, 4))
    assert torch.equal(first.fc.weight, again.fc.weight)
    assert not torch.equal(first.fc.weight, other.fc.weight)
