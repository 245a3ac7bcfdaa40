"""Device, numeric precision, seeding and the torchrun process group: the facts about the
machine(s) a run adapts to.

    dist = init_distributed(no_cuda=False)       # rank 0 of 1 unless started by torchrun
    precision, why = select_precision("auto", dist.device)
"""

import os
import random
from dataclasses import dataclass
from datetime import timedelta
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
        bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bf16 is slower than fp16
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


# ------------------------------------------------------------------ torchrun / DDP


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all ranks (identity when alone)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_reduce_max(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def all_gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` when alone)."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        holder = [obj]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]


def init_distributed(no_cuda: bool) -> Distributed:
    """Join the torchrun process group if this process was started by torchrun: NCCL with one
    GPU per process, gloo on the CPU. Ranks other than 0 keep their progress bars quiet."""
    device = select_device(no_cuda)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # batches keep one shape: pick the fastest convolutions once
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=timedelta(minutes=30))
    if rank != 0:
        os.environ["TQDM_DISABLE"] = "1"
    return Distributed(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def cpu_copy(obj):
    """A copy of a (nested) state dict with every tensor in host memory."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def wrap_model(model: torch.nn.Module, dist: Distributed, sync_bn: bool = False,
               compile_model: bool = False) -> torch.nn.Module:
    """DDP under torchrun (SyncBatchNorm if asked), then torch.compile if asked."""
    if dist.enabled:
        if sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(model) if compile_model else model
