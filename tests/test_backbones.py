"""Every backbone's feature is the input of its final Linear, loaded the real way from an offline cache."""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch
import torchvision

from features import (BOOK, ConfigError, WeightsUnavailableError, build_model, catalog, checkpoint_path, get_backbone,
                      load_backbone, weights_enum)
from features.backbones import TorchvisionSource, final_linear, fold_batchnorm

from .conftest import save_checkpoint

# One of each family the issue names; ViT and Swin need their own 224 px, the others run small.
ZOO = {"resnet34": 96, "inception": 96, "densenet121": 96, "efficientnet_b0": 96, "convnext_tiny": 96,
       "regnet_y_400mf": 96, "mobilenet_v3_small": 96, "mobilenet_v2": 96, "vit_b_32": 224, "swin_t": 224}


@pytest.fixture(scope="module")
def zoo_home(tmp_path_factory):
    """A TORCH_HOME with a seeded checkpoint under torchvision's file name for each model of ZOO."""
    home = tmp_path_factory.mktemp("zoo_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        for seed, name in enumerate(ZOO):
            save_checkpoint(name, seed)
        save_checkpoint("mobilenet_v2", 99, weights="IMAGENET1K_V1")  # its default (imagenet) is IMAGENET1K_V2
    return home


@pytest.fixture
def zoo(zoo_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(zoo_home))


def _images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def _original(name: str, weights: str = "imagenet") -> torch.nn.Module:
    """The untouched torchvision model with the cached checkpoint, as a user of torchvision would load it."""
    spec = get_backbone(name)
    enum = weights_enum(spec, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(spec.builder, weights=None, num_classes=len(enum.meta["categories"]),
                                             **spec.builder_kwargs(enum.meta))
    model.load_state_dict(torch.load(checkpoint_path(spec, weights), weights_only=True))
    return model.eval()


def _imagenet_input(images: torch.Tensor, name: str) -> torch.Tensor:
    """The input torchvision's own preset expects: the weights' mean and std."""
    transform = weights_enum(get_backbone(name), "imagenet").transforms()
    mean, std = torch.tensor(transform.mean).view(1, 3, 1, 1), torch.tensor(transform.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@pytest.mark.parametrize("name", list(ZOO))
def test_feature_is_the_input_of_the_final_linear(name, zoo):
    backbone = load_backbone(get_backbone(name), weights="imagenet")
    original = _original(name)
    final = original.get_submodule(final_linear(original))
    assert not any(p.requires_grad or p.is_meta for p in backbone.parameters()) and not backbone.model.training
    images = _images(ZOO[name])
    with torch.inference_mode():
        features = backbone(backbone.preprocess(images))
        logits, through_final = original(_imagenet_input(images, name)), final(features)
    assert features.shape == (2, final.in_features)
    assert backbone.feature_shape(ZOO[name]) == (final.in_features,)
    torch.testing.assert_close(through_final, logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())


def test_the_classifier_never_runs(zoo):
    backbone = load_backbone(get_backbone("convnext_tiny"), weights="imagenet")
    ran = []
    backbone.model.get_submodule(final_linear(backbone.model)).register_forward_hook(lambda *a: ran.append(1))
    with torch.inference_mode():
        backbone(backbone.preprocess(_images(64)))
    assert not ran


@pytest.mark.parametrize("name", ["convnext_tiny", "mobilenet_v2", "efficientnet_b0"])
def test_pool_max_and_none_use_the_map_before_the_global_pool(name, zoo):
    spec = get_backbone(name)
    maps, maxed, pooled = (load_backbone(spec, weights="imagenet", pool=p) for p in ("none", "max", "avg"))
    images = _images(96)
    with torch.inference_mode():
        fmap = maps(maps.preprocess(images))
        assert fmap.ndim == 4 and maps.feature_shape(96) == tuple(fmap.shape[1:])
        torch.testing.assert_close(maxed(maxed.preprocess(images)), fmap.amax(dim=(2, 3)))
        if name == "efficientnet_b0":  # its head is pool -> dropout -> Linear: the mean of the map is the feature
            torch.testing.assert_close(pooled(pooled.preprocess(images)), fmap.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def test_a_model_without_a_map_refuses_pool_max(zoo):
    with pytest.raises(ConfigError, match="vit_b_32 has no spatial map.*--pool avg"):
        load_backbone(get_backbone("vit_b_32"), weights="imagenet", pool="max")


def test_a_fixed_size_model_refuses_another_size_and_names_its_own(zoo):
    backbone = load_backbone(get_backbone("vit_b_32"), weights="imagenet")
    with pytest.raises(ConfigError, match="too small for vit_b_32; it needs at least 224.*--image-size 224"):
        backbone.feature_shape(96)
    with pytest.raises(ConfigError, match="vit_b_32 cannot take 256 px images.*--image-size 224"):
        backbone.feature_shape(256)
    with pytest.raises(ConfigError, match="too small for inception; it needs at least 75"):
        load_backbone(get_backbone("inception"), weights="imagenet").feature_shape(64)


@pytest.mark.parametrize(("name", "map_shape"), [("resnet34", (512, 10, 10)), ("inception", (2048, 8, 8)),
                                                 ("densenet121", (1024, 9, 9))])
def test_the_books_maps_at_299_px(name, map_shape):
    """At 299 px the book's map shapes; Inception's is Mixed_7c's output."""
    spec = get_backbone(name)
    full, pooled = (load_backbone(spec, weights="random", pool=p) for p in ("none", "avg"))
    assert full.feature_shape(299) == map_shape and full.layer == spec.map_layer
    images = _images(299, n=1)
    with torch.inference_mode():
        fmap = full(full.preprocess(images))
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), pooled(pooled.preprocess(images)), rtol=1e-5, atol=1e-5)


def test_weights_by_name_and_unknown_names(zoo):
    spec = get_backbone("mobilenet_v2")
    v1 = build_model(spec, "IMAGENET1K_V1")
    saved = torch.load(checkpoint_path(spec, "IMAGENET1K_V1"), weights_only=True)
    assert torch.equal(v1.classifier[1].weight, saved["classifier.1.weight"])
    assert checkpoint_path(spec, "imagenet") == checkpoint_path(spec, "IMAGENET1K_V2") != checkpoint_path(spec, "IMAGENET1K_V1")
    assert not torch.equal(build_model(spec, "imagenet").classifier[1].weight, v1.classifier[1].weight)
    with pytest.raises(ConfigError, match="mobilenet_v2 has no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1, IMAGENET1K_V2"):
        build_model(spec, "IMAGENET1K_V9")


@pytest.mark.parametrize("name", ["resnet34", "regnet_y_400mf"])  # RegNet's builder computes its widths with tensors
def test_models_are_built_without_an_initialisation_the_checkpoint_overwrites(name, zoo, monkeypatch):
    calls = []
    original = torch.nn.init.kaiming_uniform_
    # under torch.device("meta") torch's function mode calls it with the tensor as a keyword
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_",
                        lambda tensor, *a, **k: (calls.append(tensor.is_meta), original(tensor, *a, **k))[1])
    model = build_model(get_backbone(name), "imagenet")
    assert calls and all(calls)  # every initialisation ran on the meta device: no work, no memory
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("name", ["inception", "googlenet", "vit_h_14", "maxvit_t", "swin_t", "densenet121"])
def test_the_registry_builds_what_torchvision_builds_for_the_weights(name, monkeypatch):
    """The builder arguments declared per family are the ones torchvision's builder derives from the weights:
    its own build loads the state of ours (strictly: the same shapes) and handles input as ours does."""
    spec = get_backbone(name)
    enum = weights_enum(spec, "imagenet")
    ours = TorchvisionSource.architecture(spec, TorchvisionSource.builder_kwargs(spec, enum), empty=True)
    monkeypatch.setattr(type(enum), "get_state_dict", lambda *args, **kwargs: ours.state_dict())
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torchvision.models.get_model(spec.builder, weights=enum)
    for attribute in ("transform_input", "image_size"):
        assert getattr(theirs, attribute, None) == getattr(ours, attribute, None)


def test_random_weights_have_the_architecture_of_the_pretrained_ones(zoo):
    for name in ("inception", "vit_b_32"):
        spec = get_backbone(name)
        saved = torch.load(checkpoint_path(spec), weights_only=True)
        model = build_model(spec, "random")
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in saved.items()}
    assert build_model(get_backbone("inception"), "random").transform_input


def test_offline_without_cached_weights_names_file_and_folder(empty_torch_home):
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model(get_backbone("resnet34"), "imagenet")
    message = str(caught.value)
    assert "resnet34-b627a593.pth" in message and str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--weights random" in message


def test_first_use_online_downloads_into_a_hub_cache_that_does_not_exist_yet(empty_torch_home, monkeypatch):
    """A fresh machine has no $TORCH_HOME/hub/checkpoints; torch's downloader writes beside the file, not the folder."""
    spec = get_backbone("resnet34")
    state = torchvision.models.resnet34().state_dict()
    fetched = []

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        fetched.append((url, hash_prefix))
        with open(dst + ".partial", "wb") as handle:  # as torch.hub does, before renaming it into place
            torch.save(state, handle)
        os.replace(dst + ".partial", dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model = build_model(spec, "imagenet")
    assert fetched == [(weights_enum(spec, "imagenet").url, "b627a593")]
    assert checkpoint_path(spec).exists() and torch.equal(model.fc.weight, state["fc.weight"])


def test_broken_cached_checkpoint_says_delete_it(empty_torch_home):
    path = checkpoint_path(get_backbone("densenet121"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="(?s)densenet121-a639ec97.pth is not a loadable checkpoint.*delete it"):
        build_model(get_backbone("densenet121"), "imagenet")


@pytest.mark.parametrize("name", list(BOOK))
def test_batch_norms_are_folded_without_changing_the_function(name):
    model = build_model(get_backbone(name), "random").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        before = model(x)
        assert fold_batchnorm(model) > 0
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4 * before.abs().max().item())


def test_inception_takes_minus_one_to_one_instead_of_transforming_its_input():
    backbone = load_backbone(get_backbone("inception"), weights="random")
    assert not backbone.model.transform_input and backbone.prep.mean == (0.5, 0.5, 0.5)
    x = backbone.preprocess(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.allclose(x, torch.ones_like(x))


def test_random_weights_are_seeded():
    spec = get_backbone("resnet34")
    first, again, other = (build_model(spec, "random", seed) for seed in (3, 3, 4))
    assert torch.equal(first.fc.weight, again.fc.weight) and not torch.equal(first.fc.weight, other.fc.weight)


def test_weights_cast_once_give_the_autocast_features():
    spec = get_backbone("resnet34")
    plain, cast = load_backbone(spec, weights="random"), load_backbone(spec, weights="random")
    cast.cast_weights(torch.bfloat16)
    assert cast.model.conv1.weight.dtype == torch.bfloat16 and plain.model.conv1.weight.dtype == torch.float32
    x = plain.preprocess(_images(64))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(cast(x), plain(x))


def test_a_backbone_compiles_to_one_graph():
    """The forward stops at the feature without hooks or exceptions: torch.compile takes it whole."""
    backbone = load_backbone(get_backbone("resnet34"), weights="random", pool="max")
    x = backbone.preprocess(_images(64))
    compiled = torch.compile(backbone, fullgraph=True, backend="eager")  # fullgraph: a graph break fails
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), backbone(x))


def test_the_catalog_lists_every_torchvision_model_with_its_sizes():
    entries = {e.name: e for e in catalog()}
    assert list(entries)[:3] == list(BOOK) and entries["inception"].image_size == 299
    assert entries["convnext_tiny"].feature_dim == 768 and entries["convnext_tiny"].image_size == 224
    assert entries["vit_h_14"].image_size == 518 and "IMAGENET1K_SWAG_LINEAR_V1" in entries["vit_h_14"].weights
    assert entries["squeezenet1_0"].feature_dim is None  # a convolution makes its logits: no final Linear
    assert "inception_v3" not in entries


# --- timm, through its own Hugging Face cache ---

TIMM_MODELS = ["resnet18.a1_in1k", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding seeded checkpoints where timm looks for the pretrained ones."""
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for i, name in enumerate(TIMM_MODELS):
        torch.manual_seed(i)
        model = timm.create_model(name, pretrained=False)
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("0" * 40)
        (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "snapshots" / ("0" * 40) / "model.safetensors"))
    return tmp_path / "hub"


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_features_are_the_pre_logits(name, hf_cache):
    import timm

    spec = get_backbone(f"timm:{name}")
    backbone = load_backbone(spec, weights="imagenet")
    images = _images(224)
    reference = timm.create_model(name, pretrained=True).eval()
    cfg = timm.data.resolve_model_data_config(reference)
    x = (images.float() / 255 - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        features = backbone(backbone.preprocess(images))
        logits, through_final = reference(x), reference.get_classifier()(features)
    torch.testing.assert_close(through_final, logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())


def test_timm_offline_names_the_file_and_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model(get_backbone("timm:resnet18.a1_in1k"), "imagenet")
    assert "model.safetensors" in str(caught.value) and str(tmp_path / "hub" / "models--timm--resnet18.a1_in1k") in str(caught.value)
    assert time.perf_counter() - started < 30
