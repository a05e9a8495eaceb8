"""Model registry, architectures, small-input adaptation and strict checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.errors import CheckpointError, ModelError
from edgekd.models import (
    available_models,
    build_model,
    count_parameters,
    load_weights,
    model_options,
    register_model,
)

EXPECTED_MODELS = {
    "cnn_small", "cnn_tiny",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "wrn_16_2", "wrn_40_2",
    "resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "shufflenet_v2_x1_0", "efficientnet_b0",
}  # fmt: skip


def _build(arch, num_classes=10, in_channels=3, image_size=32, options=None, seed=0):
    torch.manual_seed(seed)
    return build_model(arch, num_classes, in_channels, image_size, options).eval()


def _final_spatial(model: nn.Module, feature_module: nn.Module, image_size: int = 32) -> tuple[int, int]:
    seen = []
    handle = feature_module.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, image_size, image_size))
    handle.remove()
    return seen[0]


def test_registry_lists_expected_models_sorted():
    names = available_models()
    assert names == sorted(names)
    assert EXPECTED_MODELS <= set(names)


@pytest.mark.parametrize("arch", available_models())
def test_every_model_gives_logits_for_batch_2_and_1(arch):
    model = _build(arch)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "arch, in_channels, options, low, high",
    [
        ("resnet20", 3, None, 0.26e6, 0.28e6),
        ("resnet56", 3, None, 0.84e6, 0.87e6),
        ("resnet110", 3, None, 1.70e6, 1.75e6),
        ("wrn_40_2", 3, None, 2.2e6, 2.3e6),
        ("mobilenet_v2", 3, None, 2.2e6, 2.3e6),
        ("cnn_small", 1, None, 0.25e6, 1.0e6),
        ("cnn_tiny", 1, None, 20e3, 60e3),
        ("resnet8", 3, {"width": 8}, 15e3, 25e3),
    ],
)
def test_parameter_counts(arch, in_channels, options, low, high):
    assert low <= count_parameters(_build(arch, in_channels=in_channels, options=options)) <= high


def test_width_option_narrows_models():
    assert count_parameters(_build("resnet20", options={"width": 8})) < count_parameters(_build("resnet20")) / 3
    assert count_parameters(_build("cnn_tiny", options={"width": 8})) < count_parameters(_build("cnn_tiny"))
    narrow = _build("mobilenet_v2", options={"width_mult": 0.5})
    assert count_parameters(narrow) < count_parameters(_build("mobilenet_v2"))


def test_dropout_option_adds_dropout_to_wrn():
    assert not any(isinstance(m, nn.Dropout) for m in _build("wrn_16_2").modules())
    assert any(isinstance(m, nn.Dropout) for m in _build("wrn_16_2", options={"dropout": 0.3}).modules())


def test_build_is_deterministic_for_a_fixed_seed():
    for arch in ("resnet20", "mobilenet_v2"):
        a, b = _build(arch, seed=3).state_dict(), _build(arch, seed=3).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(_build("resnet20", seed=1).fc.weight, _build("resnet20", seed=2).fc.weight)


def test_resnet18_small_input_stem_and_4x4_features():
    model = _build("resnet18", image_size=32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert _final_spatial(model, model.layer4) == (4, 4)


def test_mobilenet_v2_cifar_variant_4x4_features():
    model = _build("mobilenet_v2", image_size=32)
    assert model.features[0][0].stride == (1, 1)
    assert model.features[2].conv[1][0].stride == (1, 1)
    assert _final_spatial(model, model.features) == (4, 4)


@pytest.mark.parametrize(
    "arch, feature_attr, size",
    [("mobilenet_v3_small", "features", 2), ("efficientnet_b0", "features", 2), ("shufflenet_v2_x1_0", "conv5", 4)],
)
def test_other_torchvision_models_adapt_stem(arch, feature_attr, size):
    model = _build(arch, image_size=32)
    assert _final_spatial(model, getattr(model, feature_attr)) == (size, size)


def test_large_input_keeps_torchvision_stem():
    resnet = _build("resnet18", image_size=224)
    assert resnet.conv1.kernel_size == (7, 7) and resnet.conv1.stride == (2, 2)
    assert isinstance(resnet.maxpool, nn.MaxPool2d)
    mobilenet = _build("mobilenet_v2", image_size=224)
    assert mobilenet.features[0][0].stride == (2, 2)
    assert mobilenet.features[2].conv[1][0].stride == (2, 2)
    gray = _build("resnet18", in_channels=1, image_size=224)
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("arch", ["cnn_small", "cnn_tiny", "resnet20", "wrn_16_2", "resnet18", "mobilenet_v2"])
def test_single_channel_input(arch):
    model = _build(arch, in_channels=1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def _model_error(**kwargs) -> str:
    with pytest.raises(ModelError) as info:
        build_model(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_arch_lists_available_and_suggests():
    message = _model_error(arch="resnt18", num_classes=10)
    assert "unknown model 'resnt18'" in message
    assert "did you mean 'resnet18'" in message
    assert "resnet{8,14,18,20,32,34,44,50,56,110}" in message and "wrn_{16_2,40_2}" in message
    for name in available_models():  # every registered name can be read off the compact list
        assert name in message or name.startswith(("resnet", "wrn_")), name


def test_unknown_option_names_allowed_options():
    message = _model_error(arch="resnet20", num_classes=10, options={"widht": 8})
    assert "'widht'" in message and "allowed: width" in message
    assert "allowed: none" in _model_error(arch="resnet18", num_classes=10, options={"width_mult": 0.5})
    assert model_options("mobilenet_v2") == {"width_mult": 1.0, "dropout": 0.2}


@pytest.mark.parametrize(
    "arch, options, needle",
    [
        ("resnet20", {"width": 0}, "width must be a positive integer"),
        ("cnn_tiny", {"width": "8"}, "width must be a positive integer"),
        ("cnn_small", {"width": True}, "width must be a positive integer"),
        ("mobilenet_v2", {"width_mult": -1.0}, "width_mult must be a number > 0"),
        ("wrn_40_2", {"dropout": 1.0}, "dropout must be a probability in [0, 1)"),
    ],
)
def test_bad_option_value(arch, options, needle):
    message = _model_error(arch=arch, num_classes=10, options=options)
    assert arch in message and needle in message


def test_bad_sizes():
    assert "num_classes must be a positive integer" in _model_error(arch="resnet20", num_classes=0)
    assert "in_channels" in _model_error(arch="resnet20", num_classes=10, in_channels=0)


def test_register_model_rejects_malformed_factory():
    with pytest.raises(TypeError):

        @register_model("malformed_test_model")
        def _factory(num_classes, in_channels, image_size, width=16):  # option not keyword-only
            return nn.Linear(1, 1)

    assert "malformed_test_model" not in available_models()
    with pytest.raises(ValueError):
        register_model("resnet20")(lambda num_classes, in_channels, image_size: None)


def _checkpoint_error(model, state_dict, source="teacher.pt") -> str:
    with pytest.raises(CheckpointError) as info:
        load_weights(model, state_dict, source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_weights_round_trip():
    source, target = _build("resnet20", seed=1), _build("resnet20", seed=2)
    load_weights(target, source.state_dict(), "a.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_load_weights_takes_a_file_without_batchnorm_counters():
    """Files saved before PyTorch 0.4.1 have no num_batches_tracked; torch's loading keeps the model's."""
    source, target = _build("resnet20", seed=1), _build("resnet20", seed=2)
    old = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(source.state_dict())
    load_weights(target, old, "old.pt")
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in old.items())
    # Any other missing tensor is still refused.
    del old["fc.bias"]
    assert "1 missing key (e.g. 'fc.bias')" in _checkpoint_error(target, old)


def test_load_weights_missing_and_unexpected_keys():
    message = _checkpoint_error(_build("resnet32"), _build("resnet20").state_dict())
    assert message.startswith("checkpoint teacher.pt does not fit resnet32: ")
    assert "missing keys (e.g. 'layer1.3." in message
    message = _checkpoint_error(_build("resnet20"), _build("resnet32").state_dict())
    assert "unexpected keys (e.g. 'layer1.3." in message


def test_load_weights_shape_mismatch():
    message = _checkpoint_error(_build("resnet20"), _build("resnet20", num_classes=100).state_dict())
    assert "2 shape mismatches (e.g. fc.weight: checkpoint [100, 64] vs model [10, 64])" in message
    assert "missing" not in message


def test_load_weights_rejects_non_state_dicts():
    model = _build("cnn_tiny")
    assert "expected a state_dict" in _checkpoint_error(model, [1, 2])
    bad = dict(model.state_dict(), **{"fc.bias": [0.0] * 10})
    assert "'fc.bias' is a list, expected a tensor" in _checkpoint_error(model, bad)


@pytest.mark.parametrize("arch", ["cnn_tiny", "resnet20", "mobilenet_v2"])
def test_torch_export_has_no_graph_breaks(arch):
    model = _build(arch)
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))
