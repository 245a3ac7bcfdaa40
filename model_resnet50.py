"""ResNet-50 v1.5: torchvision's ``resnet50`` (stride 2 in the bottleneck's 3x3 conv).

    model = build_resnet50(num_classes=1000, input_size=224)   # 25,557,032 parameters
    model = build_resnet50(num_classes=100, input_size=32)     # CIFAR stem
    model = load_pretrained_resnet50(device, num_classes=1000, input_size=224, weights_path="resnet-50")
"""

import json
import re
import sys
from pathlib import Path

import huggingface_hub.constants
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file as load_safetensors
from torch import nn
from torchvision.models import get_model, resnet50

from errors import UserInputError
from input_size import is_small_input


def build_resnet50(num_classes: int = 1000, input_size: int = 224, zero_init_residual: bool = True) -> nn.Module:
    """A freshly initialised ResNet-50 v1.5 for ``num_classes`` at ``input_size`` px.

    ``zero_init_residual`` starts each bottleneck's last BN at zero, so every residual block
    begins as the identity (Goyal et al. 2017; NVIDIA's v1.5 recipe): without it a network
    trained from scratch blows up at rates it would otherwise learn at."""
    model = resnet50(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    return with_small_input_stem(model) if is_small_input(input_size) else model


def with_small_input_stem(model: nn.Module) -> nn.Module:
    """A ResNet's 7x7/2 stem and max-pool replaced by a 3x3/1 convolution of the same width (CIFAR-style)."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


DEFAULT_ARCH = "resnet50"
RESNET_FAMILY = ("resnet", "resnext", "wide_resnet")


def build_model(arch: str = DEFAULT_ARCH, num_classes: int = 1000, input_size: int = 224) -> nn.Module:
    """A freshly initialised torchvision classifier by name (``torchvision.models.get_model``):
    ``resnet50`` is ResNet-50 v1.5 as above; the other ResNets also start each block as the
    identity and take the small-input stem at small sizes. An unknown name is a one-line error."""
    if arch == DEFAULT_ARCH:
        return build_resnet50(num_classes, input_size)
    resnet = arch.startswith(RESNET_FAMILY)
    try:
        model = get_model(arch, weights=None, num_classes=num_classes, **({"zero_init_residual": True} if resnet else {}))
    except (ValueError, KeyError):
        raise UserInputError(f"--arch {arch}: not a torchvision classification model; "
                             "try resnet50, resnet18, mobilenet_v3_small, ... (torchvision.models.list_models())") from None
    return with_small_input_stem(model) if resnet and is_small_input(input_size) else model


def create_model(num_classes: int, input_size: int, device: torch.device, channels_last: bool = True,
                 pretrained: bool = False, weights_path=None, class_names=None, arch: str = DEFAULT_ARCH) -> nn.Module:
    """The model on ``device`` in the memory format the input pipeline delivers; with
    ``pretrained`` (ResNet-50 only), warns when ``class_names`` do not fit a kept ImageNet head."""
    if pretrained:
        model = load_pretrained_resnet50(torch.device("cpu"), num_classes, input_size, weights_path)
        warning = check_class_order(class_names or [], num_classes) if class_names is not None else None
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    else:
        model = build_model(arch, num_classes, input_size)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def print_summary(model: nn.Module, input_size: int, device: torch.device) -> None:
    """torchsummary's layer table for one 3 x input_size x input_size image."""
    from torchsummary import summary

    was_training = model.training
    summary(model, (3, input_size, input_size), device=device.type)
    model.train(was_training)


# --- Microsoft's pretrained weights, offline -------------------------------------------------

HF_REPO_ID = "microsoft/resnet-50"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
IMAGENET_CLASSES = 1000
FETCH_COMMAND = f"hf download {HF_REPO_ID} config.json model.safetensors --local-dir resnet-50"
FETCH_ADVICE = (f"on a machine with internet run `{FETCH_COMMAND}`, copy the resnet-50 folder here "
                f"and pass --pretrained_path resnet-50")

# What a config.json must say for its weights to fit our v1.5 network. Shapes cannot tell
# v1 from v1.5 (only the stride moves), so downsample_in_bottleneck is checked here; it is
# absent from Microsoft's config and then defaults to False, i.e. stride in the 3x3 conv.
RESNET50_V15_CONFIG = {
    "model_type": "resnet", "layer_type": "bottleneck", "depths": [3, 4, 6, 3],
    "hidden_sizes": [256, 512, 1024, 2048], "embedding_size": 64, "hidden_act": "relu",
    "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
}
SYNSET = re.compile(r"n\d{8}")


def hf_to_torchvision_key(key: str) -> str | None:
    """Our (torchvision's) name for a tensor of transformers' ResNetForImageClassification.

    resnet.embedder.embedder.convolution.weight            -> conv1.weight
    resnet.encoder.stages.1.layers.0.layer.1.normalization.bias -> layer2.0.bn2.bias
    resnet.encoder.stages.1.layers.0.shortcut.convolution.weight -> layer2.0.downsample.0.weight
    classifier.1.weight                                    -> fc.weight
    None for a name with no counterpart."""
    if m := re.fullmatch(r"resnet\.embedder\.embedder\.(convolution|normalization)\.(\w+)", key):
        return f"{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"
    block = r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)"
    if m := re.fullmatch(block + r"\.layer\.(\d+)\.(convolution|normalization)\.(\w+)", key):
        kind = "conv" if m[4] == "convolution" else "bn"
        return f"layer{int(m[1]) + 1}.{m[2]}.{kind}{int(m[3]) + 1}.{m[5]}"
    if m := re.fullmatch(block + r"\.shortcut\.(convolution|normalization)\.(\w+)", key):
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if m[3] == 'convolution' else 1}.{m[4]}"
    if m := re.fullmatch(r"classifier\.1\.(weight|bias)", key):
        return f"fc.{m[1]}"
    return None


def is_hf_checkpoint(keys) -> bool:
    return any(key.startswith("resnet.") for key in keys)


def match_checkpoint(checkpoint: dict, target_shapes: dict, skipped: set, source: str) -> dict:
    """``checkpoint``'s tensors under our names, minus the ``skipped`` ones (re-initialised).

    Every tensor must map to exactly one of ``target_shapes`` (our state-dict names) and every
    target that is not skipped must be filled, with matching shapes; otherwise a UserInputError
    names the tensor. ``num_batches_tracked`` may be absent: older checkpoints (torchvision's
    own) lack it, and it has no effect with BatchNorm's default momentum."""
    rename = hf_to_torchvision_key if is_hf_checkpoint(checkpoint) else (lambda key: key)
    matched, source_of = {}, {}
    for key, tensor in checkpoint.items():
        ours = rename(key)
        if ours not in target_shapes:
            raise UserInputError(f"{source}: unexpected tensor {key!r}; this is not a ResNet-50 checkpoint "
                                 f"from {HF_REPO_ID} or torchvision - {FETCH_ADVICE}")
        if ours in matched:
            raise UserInputError(f"{source}: tensors {source_of[ours]!r} and {key!r} both map to {ours!r}; "
                                 f"the checkpoint is malformed - {FETCH_ADVICE}")
        matched[ours], source_of[ours] = tensor, key
    missing = [key for key in target_shapes
               if key not in matched and key not in skipped and not key.endswith(".num_batches_tracked")]
    if missing:
        raise UserInputError(f"{source}: tensor {missing[0]!r} is missing ({len(missing)} in all); the file is "
                             f"incomplete - {FETCH_ADVICE}")
    for ours, tensor in matched.items():
        if ours not in skipped and tuple(tensor.shape) != tuple(target_shapes[ours]):
            raise UserInputError(f"{source}: tensor {source_of[ours]!r} has shape {list(tensor.shape)}, "
                                 f"ResNet-50 needs {list(target_shapes[ours])} - {FETCH_ADVICE}")
    return {key: tensor for key, tensor in matched.items() if key not in skipped}


def resnet50_v15_config_mismatches(config: dict) -> list[str]:
    """The settings of a Hugging Face config.json that differ from ResNet-50 v1.5's."""
    return [f"{key}={config[key]!r}" for key, wanted in RESNET50_V15_CONFIG.items()
            if key in config and config[key] != wanted]


def check_class_order(class_names, num_classes: int) -> str | None:
    """A warning when the kept 1000-class pretrained head will not mean the dataset's classes.

    ImageFolder sorts class folders by name, which for ImageNet's synset folders
    (n01440764 ...) is the order Microsoft's head uses. With another number of classes the
    head is re-initialised and the order does not matter."""
    if num_classes != IMAGENET_CLASSES:
        return None
    names = list(class_names)
    odd = [name for name in names if not SYNSET.fullmatch(name)]
    if len(names) == IMAGENET_CLASSES and not odd and names == sorted(names):
        return None
    why = (f"{len(names)} class folders" if len(names) != IMAGENET_CLASSES
           else f"class folder {odd[0]!r} is not a synset id" if odd else "class folders are not in sorted order")
    return (f"the pretrained 1000-class head is kept but its outputs will not match your labels: {why} "
            f"(ImageNet's are n01440764 ... in sorted order); check --data_dir")


def find_pretrained_weights(weights_path=None, hf_cache_dir=None, torch_hub_dir=None) -> Path:
    """The weights file to load: ``weights_path`` (a folder or a file) if given, else
    microsoft/resnet-50 in the Hugging Face cache, else a torchvision resnet50-*.pth in the
    torch hub cache. The caches default to HF_HUB_CACHE / HF_HOME and TORCH_HOME."""
    if weights_path is not None:
        return weights_file_in(Path(weights_path))
    for name in HF_WEIGHT_FILES:
        cached = try_to_load_from_cache(HF_REPO_ID, name, cache_dir=hf_cache_dir)
        if isinstance(cached, str):
            return Path(cached)
    torch_checkpoints = Path(torch_hub_dir or torch.hub.get_dir()) / "checkpoints"
    found = sorted(torch_checkpoints.glob("resnet50-*.pth"))
    if found:
        return found[0]
    hf_cache = hf_cache_dir or huggingface_hub.constants.HF_HUB_CACHE
    raise UserInputError(f"--use_pretrained: no ResNet-50 weights found, looked for {HF_REPO_ID} in the Hugging "
                         f"Face cache {hf_cache} and for resnet50-*.pth in {torch_checkpoints}; {FETCH_ADVICE}")


def weights_file_in(path: Path) -> Path:
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise UserInputError(f"--pretrained_path {path}: the folder has no {' or '.join(HF_WEIGHT_FILES)}; "
                             f"{FETCH_ADVICE}")
    if not path.is_file():
        raise UserInputError(f"--pretrained_path {path}: no such file or folder; {FETCH_ADVICE}")
    return path


def read_checkpoint(path: Path) -> dict:
    """The tensors in a .safetensors file or a torch.save'd state dict (loaded weights_only)."""
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # each format fails in its own way; all mean "unreadable"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserInputError(f"{path}: cannot read the weights ({reason}); the file is damaged or not a "
                             f"weights file - {FETCH_ADVICE}") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserInputError(f"{path}: not a state dict of tensors; {FETCH_ADVICE}")
    return state


def check_hf_config_next_to(weights_file: Path) -> None:
    config_path = weights_file.parent / "config.json"
    if weights_file.name not in HF_WEIGHT_FILES or not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{config_path}: not readable JSON ({exc}); {FETCH_ADVICE}") from None
    mismatches = resnet50_v15_config_mismatches(config)
    if mismatches:
        raise UserInputError(f"{config_path}: not a ResNet-50 v1.5 configuration ({', '.join(mismatches)}); "
                             f"use {HF_REPO_ID}")


def load_pretrained_resnet50(device, num_classes: int = 1000, input_size: int = 224, weights_path=None) -> nn.Module:
    """build_resnet50's network with Microsoft's ResNet-50 weights, found offline (see
    find_pretrained_weights). A head for other than 1000 classes, and the CIFAR stem used at
    small input sizes, stay freshly initialised; the log says which."""
    weights_file = find_pretrained_weights(weights_path)
    check_hf_config_next_to(weights_file)
    checkpoint = read_checkpoint(weights_file)

    model = build_resnet50(num_classes, input_size)
    target_shapes = {key: value.shape for key, value in model.state_dict().items()}
    notes, skipped = [], set()
    rename = hf_to_torchvision_key if is_hf_checkpoint(checkpoint) else (lambda key: key)
    given_shapes = {rename(key): tuple(tensor.shape) for key, tensor in checkpoint.items()}

    def differs(name: str) -> bool:  # a checkpoint of our own small-input model keeps its stem
        return given_shapes.get(name) != tuple(target_shapes[name])

    if is_small_input(input_size) and differs("conv1.weight"):
        skipped |= {key for key in target_shapes if key.startswith(("conv1.", "bn1."))}
        notes.append(f"the 7x7 stem does not fit the 3x3 stem used at {input_size} px, "
                     f"so conv1/bn1 are re-initialised")
    if differs("fc.weight"):
        skipped |= {key for key in target_shapes if key.startswith("fc.")}
        notes.append(f"classifier re-initialised for {num_classes} classes")
    loaded = match_checkpoint(checkpoint, target_shapes, skipped, str(weights_file))
    model.load_state_dict(model.state_dict() | loaded)
    layout = "Hugging Face" if is_hf_checkpoint(checkpoint) else "torchvision"
    print(f"Pretrained: loaded {len(loaded)} tensors from {weights_file} ({layout} layout)"
          + "".join(f"; {note}" for note in notes), flush=True)
    return model.to(device)
