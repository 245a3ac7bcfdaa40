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
