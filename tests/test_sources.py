"""The source registry (softcamify.sources): one module per source, dispatched by kind."""

from __future__ import annotations

import pytest

from softcamify import sources
from softcamify.errors import InputError, UsageError


def test_names_parse_to_their_source():
    assert sources.parse_name("resnet18") == ("timm", "resnet18")
    assert sources.parse_name("tv:resnet18") == ("torchvision", "resnet18")
    assert sources.parse_name("MONAI:DenseNet121") == ("monai", "DenseNet121")
    with pytest.raises(InputError, match="monai:NAME"):
        sources.parse_name("keras:resnet")
    with pytest.raises(InputError, match="never downloads"):
        sources.parse_name("hf-hub:timm/resnet18")


def test_every_kind_has_the_same_functions():
    for kind in sources.KINDS:
        mod = sources.source_module(kind)
        for fn in ("build", "is_known", "names", "data_defaults", "stride_args", "candidates"):
            assert callable(getattr(mod, fn)), (kind, fn)
    with pytest.raises(InputError, match="Unknown model source kind"):
        sources.source_module("pickle")


def test_stride_args_only_where_a_builder_takes_them():
    assert sources.stride_args("timm", {"in_chans": 1}, 16) == {"in_chans": 1, "output_stride": 16}
    assert sources.stride_args("torchvision", {}, 8) == {"replace_stride_with_dilation": [False, True, True]}
    assert sources.stride_args("monai", {}, 16) is None
    assert sources.stride_args("import", {}, 16) is None
    assert sources.stride_args("module", {}, 16) is None


def test_describe_names_the_source_and_its_arguments():
    assert sources.describe({"kind": "timm", "name": "resnet18"}) == "timm resnet18"
    text = sources.describe({"kind": "monai", "name": "DenseNet121", "model_args": {"in_channels": 1}})
    assert text == "monai DenseNet121 (in_channels=1)"
    assert sources.describe({"kind": "import", "name": "pkg.nets:Net"}) == "pkg.nets:Net"


def test_own_classes_are_imported_only_as_nn_modules():
    with pytest.raises(UsageError, match="package.module:Class"):
        sources.build("import", "not a spec")
    with pytest.raises(InputError, match="not a network class"):
        sources.build("import", "os:system", None, {"command": "true"})
    with pytest.raises(InputError, match="not an nn.Module class"):
        sources.build("import", "torch.nn.functional:relu", None, {})
    net = sources.build("import", "torch.nn:Linear", None, {"in_features": 2, "out_features": 3})
    assert net.out_features == 3


def test_the_report_says_what_exact_was_measured_against(resnet_weights):
    """A state dict converted under an architecture name is compared with that rebuild, and says so."""
    import softcamify
    from softcamify.checkpoints import load_model

    loaded = load_model("test_resnet", weights=resnet_weights, input_size=(64, 64))
    sc = softcamify.convert(loaded, samples=2)
    said = f"timm test_resnet rebuilt from the state dict {resnet_weights.name}"
    assert sc.meta.conversion["compared_with"] == said
    assert f"verified against {said}." in sc.meta.conversion["notes"]
