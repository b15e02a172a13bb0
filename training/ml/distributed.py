"""Device selection and torch.distributed setup (single process, or DDP under torchrun)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """Where this process runs and which slice of the work it owns."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device and, when launched by torchrun (WORLD_SIZE > 1), join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(device=dev, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown_runtime(rt: Runtime, barrier: bool = True) -> None:
    if rt.distributed and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def uses_bf16(rt: Runtime, bf16: bool) -> bool:
    return bf16 and rt.device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(rt: Runtime, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when the GPU supports it; CPU bf16 is slow on most hosts, so no-op there."""
    if uses_bf16(rt, bf16):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_gather_lists(rt: Runtime, values: list[Any]) -> list[Any]:
    """Concatenate a Python list across ranks (eval results; small, so pickling is fine)."""
    if not rt.distributed:
        return values
    gathered: list[list[Any]] = [[] for _ in range(rt.world_size)]
    dist.all_gather_object(gathered, values)
    return [v for part in gathered for v in part]


def mean_across_ranks(rt: Runtime, values: list[float]) -> list[float]:
    """Element-wise mean over ranks, in one collective."""
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / rt.world_size).tolist()


def broadcast_object(rt: Runtime, obj: Any) -> Any:
    """Rank 0's value on every rank (e.g. whether saving succeeded)."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on accumulation micro-steps; only the last one syncs."""
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
