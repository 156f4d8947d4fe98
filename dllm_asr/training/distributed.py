"""Multi-process training over torch.distributed, launched by torchrun or accelerate launch.

Only the small trained deltas (adapter, CTC head, LoRA) receive gradients, so each step
all-reduces their gradients explicitly after backward: the same arithmetic as DDP's averaging,
without wrapping the model (the model's inference methods stay callable as they are).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Average the gradients of `params` over all processes (DDP's gradient averaging)."""
        if self.world_size == 1:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= self.world_size

    def mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        """The mean of each number over all processes (every process must pass the same keys)."""
        if self.world_size == 1:
            return dict(stats)
        keys = sorted(stats)
        values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return {key: float(value) / self.world_size for key, value in zip(keys, values.tolist())}

    def sum_over_processes(self, value: int) -> int:
        if self.world_size == 1:
            return value
        total = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return int(total.item())

    def _comm_device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def shutdown(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> when CUDA is there, else cpu; otherwise the named device."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(preference)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun/accelerate (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=chosen)
