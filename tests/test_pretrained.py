"""Microsoft's ResNet-50 weights, loaded offline, give the reference model's logits.

The reference is transformers' ResNetForImageClassification built with microsoft/resnet-50's
configuration, randomly initialised (no download), its batch-norm statistics perturbed so that
a tensor landing in the wrong place changes the logits.
"""

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50

from errors import UserInputError
from model_resnet50 import (
    FETCH_COMMAND,
    build_resnet50,
    check_class_order,
    find_pretrained_weights,
    hf_to_torchvision_key,
    load_pretrained_resnet50,
    resnet50_v15_config_mismatches,
)

from conftest import FAST

CPU = torch.device("cpu")
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def perturb_batch_norms(model: torch.nn.Module, seed: int) -> None:
    """Statistics and affine parameters away from their defaults (mean 0, var 1, weight 1, bias 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
                module.weight.copy_(0.5 + 0.5 * torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
                module.num_batches_tracked.fill_(1000)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' ResNet-50 with microsoft/resnet-50's configuration, saved as its hub folder would be."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                          layer_type="bottleneck", hidden_act="relu", downsample_in_first_stage=False,
                          downsample_in_bottleneck=False, num_labels=1000)
    model = ResNetForImageClassification(config).eval()
    perturb_batch_norms(model, seed=1)
    folder = tmp_path_factory.mktemp("microsoft-resnet-50")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))


def hf_logits(model, images):
    with torch.no_grad():
        return model(pixel_values=images).logits


def our_logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


def hf_state(reference) -> dict:
    return dict(reference[0].state_dict())


def test_the_reference_configuration_is_v15(reference):
    hf = reference[0]
    first_block = hf.resnet.encoder.stages[1].layers[0].layer
    assert first_block[0].convolution.stride == (1, 1) and first_block[1].convolution.stride == (2, 2)
    assert hf.resnet.embedder.embedder.normalization.eps == 1e-5


def test_hf_names_map_onto_ours():
    assert hf_to_torchvision_key("resnet.embedder.embedder.convolution.weight") == "conv1.weight"
    assert hf_to_torchvision_key("resnet.embedder.embedder.normalization.running_var") == "bn1.running_var"
    assert (hf_to_torchvision_key("resnet.encoder.stages.1.layers.0.layer.1.normalization.bias")
            == "layer2.0.bn2.bias")
    assert (hf_to_torchvision_key("resnet.encoder.stages.3.layers.0.shortcut.convolution.weight")
            == "layer4.0.downsample.0.weight")
    assert (hf_to_torchvision_key("resnet.encoder.stages.0.layers.0.shortcut.normalization.running_mean")
            == "layer1.0.downsample.1.running_mean")
    assert hf_to_torchvision_key("classifier.1.bias") == "fc.bias"
    assert hf_to_torchvision_key("classifier.0.weight") is None
    assert hf_to_torchvision_key("resnet.pooler.weight") is None


def test_safetensors_folder_gives_the_reference_logits_and_is_preferred_over_bin(reference, batch, capsys):
    hf_model, folder = reference
    (folder / "pytorch_model.bin").write_bytes(b"a damaged .bin that must not be read")
    try:
        model = load_pretrained_resnet50(CPU, num_classes=1000, input_size=224, weights_path=folder)
    finally:
        (folder / "pytorch_model.bin").unlink()
    assert (our_logits(model, batch) - hf_logits(hf_model, batch)).abs().max() < 1e-4
    assert f"Pretrained: loaded 320 tensors from {folder / 'model.safetensors'} (Hugging Face layout)" \
        in capsys.readouterr().out


def test_pytorch_model_bin_gives_the_reference_logits(reference, batch, tmp_path):
    hf_model, folder = reference
    # What save_pretrained(safe_serialization=False) wrote before transformers 5 (which always writes safetensors).
    torch.save(hf_state(reference), tmp_path / "pytorch_model.bin")
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    model = load_pretrained_resnet50(CPU, weights_path=tmp_path)
    assert (our_logits(model, batch) - hf_logits(hf_model, batch)).abs().max() < 1e-4


def test_torchvision_checkpoint_in_the_torch_cache_gives_its_logits(tmp_path, batch, monkeypatch, capsys):
    torch.manual_seed(3)
    torchvision_model = resnet50().eval()
    perturb_batch_norms(torchvision_model, seed=4)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = {key: value for key, value in torchvision_model.state_dict().items() if "num_batches_tracked" not in key}
    torch.save(state, checkpoints / "resnet50-0676ba61.pth")  # old torchvision files have no num_batches_tracked
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))

    model = load_pretrained_resnet50(CPU)
    assert (our_logits(model, batch) - our_logits(torchvision_model, batch)).abs().max() < 1e-4
    assert "loaded 267 tensors from" in capsys.readouterr().out


def test_other_classes_and_small_inputs_keep_the_backbone_and_reinitialise_the_rest(reference, capsys):
    hf_model, folder = reference
    model = load_pretrained_resnet50(CPU, num_classes=10, input_size=32, weights_path=folder)
    ours, theirs = model.state_dict(), hf_model.state_dict()
    assert torch.equal(ours["layer3.5.conv2.weight"],
                       theirs["resnet.encoder.stages.2.layers.5.layer.1.convolution.weight"])
    assert torch.equal(ours["layer1.0.downsample.1.running_var"],
                       theirs["resnet.encoder.stages.0.layers.0.shortcut.normalization.running_var"])
    assert ours["fc.weight"].shape == (10, 2048) and ours["conv1.weight"].shape == (64, 3, 3, 3)
    assert torch.equal(ours["bn1.running_var"], torch.ones(64))  # fresh, not the 7x7 stem's statistics
    log = capsys.readouterr().out
    assert "loaded 312 tensors" in log
    assert "conv1/bn1 are re-initialised" in log and "classifier re-initialised for 10 classes" in log


def write_checkpoint(folder, state, reference):
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    shutil.copy(reference[1] / "config.json", folder / "config.json")
    return folder


def test_a_missing_tensor_is_named(reference, tmp_path):
    state = hf_state(reference)
    del state["resnet.encoder.stages.3.layers.2.layer.2.normalization.running_var"]
    folder = write_checkpoint(tmp_path / "ckpt", state, reference)
    with pytest.raises(UserInputError, match=r"tensor 'layer4\.2\.bn3\.running_var' is missing") as error:
        load_pretrained_resnet50(CPU, weights_path=folder)
    assert str(folder / "model.safetensors") in str(error.value) and FETCH_COMMAND in str(error.value)


def test_a_wrong_shape_is_named(reference, tmp_path):
    state = hf_state(reference)
    state["resnet.encoder.stages.2.layers.1.layer.0.convolution.weight"] = torch.zeros(256, 1024, 3, 3)
    folder = write_checkpoint(tmp_path / "ckpt", state, reference)
    with pytest.raises(UserInputError, match=r"'resnet\.encoder\.stages\.2\.layers\.1\.layer\.0\.convolution\."
                                             r"weight' has shape \[256, 1024, 3, 3\], ResNet-50 needs "
                                             r"\[256, 1024, 1, 1\]"):
        load_pretrained_resnet50(CPU, weights_path=folder)


def test_an_unexpected_tensor_is_named(reference, tmp_path):
    state = hf_state(reference) | {"resnet.encoder.stages.3.layers.3.layer.0.convolution.weight": torch.zeros(1)}
    folder = write_checkpoint(tmp_path / "ckpt", state, reference)
    with pytest.raises(UserInputError, match=r"unexpected tensor 'resnet\.encoder\.stages\.3\.layers\.3\."):
        load_pretrained_resnet50(CPU, weights_path=folder)


@pytest.mark.parametrize("name", ["model.safetensors", "resnet50-0676ba61.pth"])
def test_a_corrupt_file_says_it_cannot_be_read(tmp_path, name):
    damaged = tmp_path / name
    damaged.write_bytes(b"\x00\x01 half a download")
    with pytest.raises(UserInputError, match="cannot read the weights") as error:
        load_pretrained_resnet50(CPU, weights_path=damaged)
    assert str(damaged) in str(error.value) and "\n" not in str(error.value)


def test_a_v1_config_is_refused(reference, tmp_path):
    config = json.loads((reference[1] / "config.json").read_text()) | {"downsample_in_bottleneck": True}
    shutil.copy(reference[1] / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match=r"not a ResNet-50 v1\.5 configuration \(downsample_in_bottleneck=True\)"):
        load_pretrained_resnet50(CPU, weights_path=tmp_path)


def test_config_check_accepts_microsofts_config_without_the_downsample_key():
    microsoft = {"model_type": "resnet", "layer_type": "bottleneck", "depths": [3, 4, 6, 3], "embedding_size": 64,
                 "hidden_sizes": [256, 512, 1024, 2048], "hidden_act": "relu", "downsample_in_first_stage": False}
    assert resnet50_v15_config_mismatches(microsoft) == []
    assert resnet50_v15_config_mismatches(microsoft | {"depths": [3, 4, 23, 3]}) == ["depths=[3, 4, 23, 3]"]


def test_a_folder_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserInputError, match="the folder has no model.safetensors or pytorch_model.bin"):
        find_pretrained_weights(tmp_path)


def test_the_hugging_face_cache_is_searched_before_the_torch_cache(reference, tmp_path):
    repo = tmp_path / "hub" / "models--microsoft--resnet-50"
    snapshot = repo / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    (snapshot / "model.safetensors").write_bytes(b"")
    torch_checkpoints = tmp_path / "torch" / "checkpoints"
    torch_checkpoints.mkdir(parents=True)
    (torch_checkpoints / "resnet50-0676ba61.pth").write_bytes(b"")

    assert find_pretrained_weights(hf_cache_dir=tmp_path / "hub", torch_hub_dir=tmp_path / "torch") \
        == snapshot / "model.safetensors"
    assert find_pretrained_weights(hf_cache_dir=tmp_path / "elsewhere", torch_hub_dir=tmp_path / "torch") \
        == torch_checkpoints / "resnet50-0676ba61.pth"


def test_nothing_found_is_one_line_naming_both_caches_and_the_fetch_command(image_folder, tmp_path, monkeypatch,
                                                                           capsys):
    import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = ["--find_lr", "--data_dir", str(image_folder), "--lr_plot", str(tmp_path / "out" / "p.png"), *FAST,
            "--arch", "resnet50", "--use_pretrained"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --use_pretrained: no ResNet-50 weights found")
    assert str(tmp_path / "hf") in err[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in err[0]
    assert FETCH_COMMAND in err[0]


def test_find_lr_runs_from_microsofts_weights(reference, image_folder, tmp_path, capsys):
    from conftest import run_main

    out = tmp_path / "out"
    code, stdout, err = run_main("--find_lr", "--data_dir", image_folder, "--lr_plot", out / "plot.png", *FAST,
                                 "--arch", "resnet50", "--input_size", "72", "--lr_iter", "8", "--use_pretrained",
                                 "--pretrained_path", reference[1])
    assert code == 0, err
    assert f"Pretrained: loaded 318 tensors from {reference[1] / 'model.safetensors'}" in stdout
    assert "classifier re-initialised for 3 classes" in stdout and "stem" not in stdout
    assert json.loads((out / "suggested_lr.json").read_text())["success"] is True


def test_microsofts_weights_are_found_in_the_hugging_face_cache(reference, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "hub" / "models--microsoft--resnet-50"
    shutil.copytree(reference[1], repo / "snapshots" / HUB_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    # huggingface_hub reads HF_HUB_CACHE / HF_HOME once, at import; this is the value it read.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    load_pretrained_resnet50(CPU)
    assert f"loaded 320 tensors from {repo / 'snapshots' / HUB_COMMIT / 'model.safetensors'}" \
        in capsys.readouterr().out


@pytest.mark.parametrize("names,num_classes,warned", [
    ([f"n{i:08d}" for i in range(1000)], 1000, None),
    (["cat", "dog", "fox"], 3, None),
    ([f"class{i:04d}" for i in range(1000)], 1000, "class folder 'class0000' is not a synset id"),
    ([f"n{i:08d}" for i in reversed(range(1000))], 1000, "class folders are not in sorted order"),
    ([f"n{i:08d}" for i in range(999)], 1000, "999 class folders"),
])
def test_class_order_warning(names, num_classes, warned):
    warning = check_class_order(names, num_classes)
    if warned is None:
        assert warning is None
    else:
        assert warned in warning and "pretrained 1000-class head" in warning


def test_a_small_input_checkpoint_of_our_own_keeps_its_stem_and_reinitialises_only_the_head(tmp_path, capsys):
    source = build_resnet50(num_classes=8, input_size=16)  # e.g. trained by train.py on other data
    with torch.no_grad():
        source.conv1.weight.fill_(0.5)
    torch.save(source.state_dict(), tmp_path / "own.pt")
    model = load_pretrained_resnet50(CPU, num_classes=10, input_size=16, weights_path=tmp_path / "own.pt")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.weight.shape == (10, 2048)
    log = capsys.readouterr().out
    assert "stem" not in log and "classifier re-initialised for 10 classes" in log
