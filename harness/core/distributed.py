"""The one torchrun set-up shared by evaluation and training: rank and world size from torchrun's environment, a
process group (gloo on the CPU, nccl on CUDA), and each rank's own GPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """The number of processes torchrun started (1 for a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when present, else the CPU; "cuda" (any index) under torchrun → this rank's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or (name.startswith("cuda") and launched_world_size() > 1):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup_distributed(device: torch.device) -> Dist:
    """torchrun's environment → an initialised process group; a plain run → rank 0 of 1."""
    if launched_world_size() <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def barrier(world_size: int) -> None:
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
