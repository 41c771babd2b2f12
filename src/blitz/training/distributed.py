"""torchrun and DistributedDataParallel: one code path, whether 1 process or many."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from blitz.errors import BlitzError
from blitz.utils.signals import StopRequested


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a world of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()  # the world of a plain process (frozen, so a safe default argument)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_world(device: torch.device) -> World:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU), or stay a world of one."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return World()
    if not dist.is_initialized():
        _join_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _join_group(backend: str) -> None:
    # After torchrun restarts a failed group (--max-restarts), its store still holds the
    # addresses the dead processes published; a key prefix per attempt keeps the new group
    # from dialling them (gloo then times out in connectFullMesh).
    store, rank, size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"blitz/attempt{attempt}", store)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=size)


def local_device(device: torch.device, world: World) -> torch.device:
    """Each process on a machine takes its own GPU."""
    if device.type == "cuda" and world.size > 1:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def shard(rows: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch (ranks take disjoint, nearly equal parts)."""
    return rows.tensor_split(world.size)[world.rank] if world.size > 1 else rows


def epoch_batches(
    size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    world: World,
    weights: torch.Tensor | None = None,
) -> list:
    """This rank's batches of row indices for one epoch: a shuffle (or with ``weights``, as
    many rows drawn with those weights, with replacement) that depends on (seed, epoch)
    alone, dealt out as ``DistributedSampler`` deals; together the ranks' k-th batches make
    the k-th global batch of ``batch_size`` rows, whatever the world size."""
    if weights is None:
        sampler: DistributedSampler[int] = DistributedSampler(
            range(size),  # type: ignore[arg-type]  # torch's stub says Dataset; it takes len() only
            world.size,
            world.rank,
            shuffle=True,
            seed=seed,
        )
        sampler.set_epoch(epoch)
        rows = torch.tensor(list(sampler), dtype=torch.long)
    else:
        gen = torch.Generator().manual_seed(seed + epoch)
        drawn = torch.multinomial(weights, size, replacement=True, generator=gen)
        padded = -size % world.size  # as DistributedSampler pads: the first rows again
        rows = torch.cat([drawn, drawn[:padded]])[world.rank :: world.size]
    return list(rows.split(batch_size // world.size))


def check_batch_size(batch_size: int, world: World) -> None:
    """The global batch is split evenly over the processes."""
    if batch_size % world.size:
        raise BlitzError(
            f"--batch-size {batch_size} cannot be split evenly over {world.size} processes: "
            f"use a multiple of {world.size}"
        )


def wrap(model: nn.Module, world: World, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel around the model when there are several processes."""
    if world.size == 1:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sum_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of a tensor over all processes (on the device the backend works on)."""
    if world.size > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather_rows(local: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate each rank's rows (in rank order) on every rank."""
    if world.size == 1:
        return local
    parts: list = [None] * world.size
    dist.all_gather_object(parts, local.cpu())
    return torch.cat(parts)


def finish() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def launch(devices: int, argv: list[str]) -> None:
    """Run ``blitz <argv>`` in ``devices`` processes through torch's own launcher (torchrun)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={devices}", "-m", "blitz", *argv]
    )
    try:
        run(args)
    except ChildFailedError as exc:  # its summary is a page long; the process said why above
        rank, failure = exc.get_first_failure()
        raise BlitzError(
            f"training process {rank} of {devices} failed (exit code {failure.exitcode}): "
            "its message is above"
        ) from None
    except SignalException as exc:  # Ctrl-C or a kill: torchrun passed it on to the processes
        name = signal.Signals(exc.sigval).name
        message = f"the {devices} training processes stopped on {name}"
        raise StopRequested(message, exc.sigval) from None
