"""Device, numeric precision and seeding: the facts about the machine a run adapts to.

    device = select_device(no_cuda=False)
    precision, why = select_precision("auto", device)
"""

import os
import random
from pathlib import Path

import numpy as np
import torch

from errors import UserInputError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def select_device(no_cuda: bool) -> torch.device:
    """CUDA (this process's local GPU under torchrun) unless disabled or absent."""
    if no_cuda or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank)


def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bf16 instructions (AVX-512 BF16 or AMX)."""
    try:
        flags = Path(cpuinfo_path).read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """Resolve ``--precision`` to one of fp32/bf16/fp16 and say why it was chosen."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return ("bf16", "CUDA device supports bf16") if bf16_ok else (
                "fp16", "CUDA device without bf16: fp16 with a GradScaler")
        if requested == "bf16" and not bf16_ok:
            raise UserInputError("--precision bf16: this CUDA device has no bf16 support; use fp16 or fp32")
        return requested, "requested"
    if requested == "fp16":
        raise UserInputError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if requested == "auto":
        if cpu_has_native_bf16():
            return "bf16", "CPU has native bf16 (avx512_bf16/AMX)"
        return "fp32", "CPU without native bf16"
    return requested, "requested"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
