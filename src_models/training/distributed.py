"""Training on several processes (GPUs, nodes) with torchrun and DistributedDataParallel.

``torchrun --nproc_per_node=N $(which semiseg) train ...`` starts N processes; each one:

- joins the process group torchrun describes (:func:`init_from_env`: NCCL on CUDA, gloo
  on the CPU) and uses GPU ``LOCAL_RANK``;
- draws its own batches from its own seeded stream (the sampler seed is ``seed + rank``);
- builds the same model (same seed); :func:`distribute` wraps the networks the method's
  optimisers train in one :class:`~torch.nn.parallel.DistributedDataParallel` module whose
  forward runs the method's whole loss computation (:meth:`Method.losses`), so the one
  backward of a step all-reduces (averages) every trained network's gradients and every
  rank takes the same optimiser step. Networks without an optimiser (SDCL's EMA teacher)
  are updated from the identical students, so they stay identical too;
- BatchNorm: on CUDA every method's BatchNorm layers become ``SyncBatchNorm`` (statistics
  over the global batch: the per-GPU batches are small). ``SyncBatchNorm`` needs a GPU:
  on the CPU each rank normalises with its own batch statistics and rank 0's running
  statistics are broadcast at every step (DDP's ``broadcast_buffers``);
- agrees with the others when to stop (:func:`any_rank`: a wall-clock budget or Ctrl-C on
  one rank stops all at the same iteration);
- rank 0 alone prints, logs and writes the (atomic) checkpoints, which hold every rank's
  sampler state so ``--resume`` continues each stream.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that prints and writes (rank 0, or the only one)."""
    return rank() == 0


def launched() -> bool:
    """True when torchrun (or another launcher) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> int:
    """Join the process group described by torchrun's environment; returns the world size
    (1 when not launched by torchrun). On CUDA each process takes GPU ``LOCAL_RANK``."""
    if not launched():
        return 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return world_size()


def local_device(device: torch.device) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under torchrun on CUDA."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


class _LossStep(nn.Module):
    """Holds the trained networks; its forward runs a step's loss computation."""

    def __init__(self, networks: dict[str, nn.Module]) -> None:
        super().__init__()
        self.networks = nn.ModuleDict(networks)

    def forward(self, compute: Callable[[], Any]) -> Any:
        return compute()


def trained_networks(method) -> dict[str, nn.Module]:
    """The networks whose parameters an optimiser of ``method`` (or its warm-up) updates."""
    params = {
        id(p) for opt in method.optimizers.values() for g in opt.param_groups for p in g["params"]
    }
    params |= {id(p) for name in method.warmup_networks for p in method.networks[name].parameters()}
    return {
        name: net
        for name, net in method.networks.items()
        if any(id(p) in params for p in net.parameters())
    }


def distribute(method) -> None:
    """Make ``method`` train with DistributedDataParallel (see the module docstring); a
    no-op in a single process."""
    if world_size() == 1:
        return
    networks = trained_networks(method)
    if method.device.type == "cuda":
        for name, net in networks.items():
            synced = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            method.networks[name] = networks[name] = synced
    ids = [method.device.index] if method.device.type == "cuda" else None
    method.distributed = nn.parallel.DistributedDataParallel(
        _LossStep(networks), device_ids=ids, find_unused_parameters=True
    )


def any_rank(*flags: bool) -> list[bool]:
    """Each flag true on every rank when it is true on any (e.g. "stop now"): one
    all-reduce for all of them."""
    if world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
