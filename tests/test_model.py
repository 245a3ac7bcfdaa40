import torch
from torch import nn

from model_resnet50 import build_resnet50, count_parameters


def test_imagenet_resnet50_has_the_reference_parameter_count():
    assert count_parameters(build_resnet50(1000, 224)) == 25_557_032


def test_v15_puts_the_downsampling_stride_in_the_3x3_conv():
    model = build_resnet50(1000, 224)
    for layer in (model.layer2, model.layer3, model.layer4):
        block = layer[0]
        assert block.conv1.stride == (1, 1)
        assert block.conv2.stride == (2, 2) and block.conv2.kernel_size == (3, 3)
        assert block.downsample[0].stride == (2, 2)
    assert model.layer1[0].conv2.stride == (1, 1)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)


def test_small_inputs_use_the_cifar_stem_and_keep_resolution():
    model = build_resnet50(100, 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 100
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_residual_branches_start_at_zero():
    model = build_resnet50(10, 32)
    assert all(float(block.bn3.weight.detach().abs().sum()) == 0 for layer in (model.layer1, model.layer4) for block in layer)


def test_summary_flag_prints_torchsummary_table(capsys):
    import main

    assert main.main(["--summary", "--no_cuda"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 25,557,032" in out and "Conv2d-1" in out


def test_arch_builds_other_torchvision_models_with_the_small_input_stem_for_resnets():
    from model_resnet50 import build_model

    small = build_model("resnet18", num_classes=10, input_size=32)
    assert (small.conv1.kernel_size, small.conv1.stride, type(small.maxpool).__name__) == ((3, 3), (1, 1), "Identity")
    assert count_parameters(small) == 11_173_962  # ResNet-18, 10 classes, 3x3 stem (64*3*3*3 weights)
    assert count_parameters(build_model("resnet18", num_classes=10, input_size=224)) == 11_181_642  # 7x7 stem
    mobile = build_model("mobilenet_v3_small", num_classes=10, input_size=32)
    assert mobile.classifier[-1].out_features == 10


def test_an_unknown_arch_is_a_one_line_error_with_exit_2(capsys):
    from conftest import run_main

    code, _, err = run_main("--find_lr", "--arch", "resnet51")
    assert code == 2
    assert err.strip().endswith("error: --arch resnet51: not a torchvision classification model "
                                "(e.g. resnet50, resnet18, mobilenet_v3_small) (see --help)")
