from __future__ import annotations

import subprocess
import sys

import pytest

from features import BOOK, ConfigError, get_backbone, resolve_backbones

BOOK_SPECS = list(BOOK.values())


@pytest.mark.parametrize("spec", BOOK_SPECS, ids=[s.name for s in BOOK_SPECS])
def test_book_names_and_aliases_find_the_entry(spec):
    for name in (spec.name, spec.name.upper(), *spec.aliases):
        assert get_backbone(name) is spec
    assert spec.image_size == 299 and spec.avg_from_map and spec.map_layer


def test_inception_takes_its_map_at_mixed_7c():
    assert get_backbone("inception").map_layer == "Mixed_7c"


def test_any_torchvision_classification_model_is_a_backbone():
    for name in ("convnext_tiny", "efficientnet_v2_s", "regnet_y_16gf", "swin_v2_t", "vit_b_16", "mobilenet_v3_large",
                 "resnet50", "vgg16"):
        spec = get_backbone(name)
        assert spec.name == name and spec.source == "torchvision" and spec.image_size is None
    assert get_backbone("densenet169").map_layer == "features" and get_backbone("densenet169").relu_on_map
    assert get_backbone("convnext_tiny").map_layer == ""  # found at build time: the global pool's input


def test_what_a_family_needs_is_found_by_its_builder_name():
    """Builder arguments torchvision derives from the weights, read from their meta where they come from it."""
    aux = {"transform_input": True, "aux_logits": True, "init_weights": False}
    assert get_backbone("inception").builder_kwargs({}) == get_backbone("googlenet").builder_kwargs({}) == aux
    assert get_backbone("vit_h_14").builder_kwargs({"min_size": (518, 518)}) == {"image_size": 518}
    assert get_backbone("maxvit_t").builder_kwargs({"min_size": (224, 224)}) == {"input_size": (224, 224)}
    assert get_backbone("resnet50").builder_kwargs({"min_size": (1, 1)}) == {}
    assert get_backbone("timm:vit_tiny_patch16_224").weights_kwargs == {}  # timm's names are not torchvision's


def test_unknown_backbone_lists_what_there_is():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg17'.*resnet34.*inception.*densenet121.*cnnfeat backbones"):
        get_backbone("vgg17")


def test_timm_names():
    spec = get_backbone("timm:resnet18.a1_in1k")
    assert spec.name == "timm:resnet18.a1_in1k" and spec.source == "timm" and spec.builder == "resnet18"
    with pytest.raises(ConfigError, match="timm has no model 'resnot18'"):
        get_backbone("timm:resnot18")


def test_all_means_the_books_three_and_lists_keep_book_order_first():
    assert [s.name for s in resolve_backbones("all")] == list(BOOK)
    assert [s.name for s in resolve_backbones(["densenet", "resnet"])] == ["resnet34", "densenet121"]
    assert [s.name for s in resolve_backbones("convnext_tiny,inception_v3,all")] == [*BOOK, "convnext_tiny"]
    with pytest.raises(ConfigError, match="no backbone given"):
        resolve_backbones(" , ")


def test_the_books_names_resolve_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "from features import resolve_backbones; print([s.name for s in resolve_backbones('all')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resnet34" in done.stdout
