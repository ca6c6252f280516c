"""Training and evaluating in several processes with ``torch.distributed``, launched by ``torchrun``.

``mambaad train`` started by ``torchrun --nproc_per_node N`` (one machine) or by torchrun's
multi-node rendezvous joins the process group torchrun describes in its environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``):
NCCL for CUDA devices (process ``LOCAL_RANK`` on GPU ``LOCAL_RANK``), gloo on CPU. Nothing
changes for a plain ``python``/``mambaad`` process.

What a distributed run does (:class:`Distributed` is how the engine and the methods see it):

- **Same numbers as one process.** ``train.batch_size`` stays the global batch: every
  process takes its ``batch / world size`` rows of each batch the one-process run would
  use (:func:`mambaad_lib.engine.trainer.training_batches`); per-sample random draws (drop
  path, dropout, Gumbel noise) are made for the whole global batch from the generator all
  processes share and each keeps its rows (:mod:`mambaad_lib.models.batch_randomness`);
  the method's training forward runs through ``DistributedDataParallel`` (gradients
  averaged over processes before clipping) with trainable BatchNorm synchronised
  (:func:`sync_batchnorm`); the per-step loss is averaged over processes.
- **One writer.** Only rank 0 locks the run folder, writes checkpoints, results, example
  figures and logs at INFO level, and shows progress bars; the run id rank 0 chooses is
  broadcast to the others.
- **Agreed stops.** A stop request (Ctrl-C, SIGTERM, a callback) on any process stops every
  process after the same step; rank 0 writes the checkpoint.
- **Sharded evaluation.** Every process predicts every W-th evaluation batch; rank 0
  gathers maps and scores in dataset order (:func:`mambaad_lib.engine.evaluate.predict_dataset`).

Runs folders, results folders and data must be visible to every process at the same paths
(on several machines: a shared file system).
"""
from __future__ import annotations

import atexit
import inspect
import logging
import os
import pickle
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mambaad_lib.utils.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
# Long: processes other than rank 0 wait in a collective while rank 0 alone computes metrics
# and writes results, which on a large test split takes minutes. A process that dies ends
# the group sooner (torchrun stops the others).
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group (one process: rank 0 of 1, no backend);
    the :class:`~mambaad_lib.methods.base.Parallel` that methods receive.

    Collectives are no-ops in one process, so the engine calls them unconditionally.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    nodes: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """Facts for results files (``backend`` null in one process)."""
        return {"world_size": self.world_size, "nodes": self.nodes, "backend": self.backend}

    # ---- batches ------------------------------------------------------------------------
    def local_batch_size(self, batch_size: int, what: str = "train.batch_size") -> int:
        """``batch_size / world_size``.

        Raises:
            ConfigError: the batch does not divide into equal shares.
        """
        if batch_size % self.world_size:
            raise ConfigError(f"config key '{what}': the global batch of {batch_size} does not divide among "
                              f"{self.world_size} processes; use a multiple of {self.world_size}")
        return batch_size // self.world_size

    def local_indices(self, batch: list[int]) -> list[int]:
        """This process's share of a global batch of dataset indices."""
        share = len(batch) // self.world_size
        return batch[self.rank * share:(self.rank + 1) * share]

    # ---- collectives --------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (any picklable object)."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0, device=self.device)
        return holder[0]

    def on_main(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on rank 0 only while the others wait; every process returns its
        result or raises its exception (so a refusal on rank 0, e.g. a locked run folder or
        bad data, stops every process with the same one-line error)."""
        if not self.enabled:
            return action()
        outcome: tuple[Any, BaseException | None] = (None, None)
        if self.is_main:
            try:
                outcome = (action(), None)
            except Exception as error:  # handed to every process, raised on all
                outcome = (None, _picklable(error))
        result, error = self.broadcast(outcome)
        if error is not None:
            raise error
        return result

    def mean(self, value: float) -> float:
        """The mean of ``value`` over processes (e.g. a step's loss: each process's is the
        mean over its equal share of the batch, so this is the global batch's mean)."""
        if not self.enabled:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total) / self.world_size

    def any_true(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any."""
        if not self.enabled:
            return flag
        votes = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return bool(votes)

    def gather(self, rows: Tensor) -> Tensor:
        """Every process's ``rows`` (same shape on all), concatenated in rank order, on every process."""
        if not self.enabled:
            return rows
        work = rows.detach().to(self.device).contiguous()
        parts = [torch.empty_like(work) for _ in range(self.world_size)]
        dist.all_gather(parts, work)
        return torch.cat(parts).to(rows.device)

    def local(self, rows: Tensor) -> Tensor:
        """This process's rows of a global batch's ``rows`` (the inverse of :meth:`gather`)."""
        if not self.enabled:
            return rows
        if rows.shape[0] % self.world_size:
            raise ValueError(f"{rows.shape[0]} rows do not split equally among {self.world_size} processes")
        return rows.chunk(self.world_size)[self.rank]

    def gather_to_main(self, value: Any) -> list[Any] | None:
        """Every process's ``value`` (picklable), in rank order, on rank 0; None elsewhere."""
        if not self.enabled:
            return [value]
        collected = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, collected, dst=0)
        return collected

    # ---- models -------------------------------------------------------------------------
    def wrap(self, network: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` (a method's training forward pass, which runs ``network``) through
        ``DistributedDataParallel`` over ``network``'s trainable parameters; its trainable
        BatchNorm layers are synchronised (:func:`sync_batchnorm`, in place). Frozen parameters (an
        encoder) are not synchronised. One process: ``forward`` itself."""
        if not self.enabled or not any(parameter.requires_grad for parameter in network.parameters()):
            return forward
        sync_batchnorm(network, self.device)
        if self.device.type == "cpu":
            # DDP's note that some CPU gradients (depthwise convolutions) are not laid out like
            # its buckets: a copy per step, not an error.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return DistributedDataParallel(_Forward(network, forward), **_NO_BUFFER_SYNC,
                                       device_ids=[self.device.index] if self.device.type == "cuda" else None)


SINGLE = Distributed()


def _picklable(error: Exception) -> Exception:
    """``error`` if it survives pickling (to travel to the other processes), else a
    RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error

# Buffers (BatchNorm statistics) stay equal without a broadcast before every forward:
# synchronised BatchNorm updates them from the same global statistics on every process.
# torch 2.14 renamed the option (broadcast_buffers still works there, with a warning).
_NO_BUFFER_SYNC = {"forward_sync_buffers": False} \
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters \
    else {"broadcast_buffers": False}


class _Forward(nn.Module):
    """A module DDP can wrap: it owns ``network`` (whose parameters DDP synchronises) and its
    forward is a method's training forward pass (which uses ``network``)."""

    def __init__(self, network: nn.Module, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.network = network
        self.training_forward = forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.training_forward(*args, **kwargs)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes with a gradient: every process's input receives the sum of all
    processes' output gradients (each process's loss depends on every process's input)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> Tensor:
        total = gradient.clone()
        dist.all_reduce(total)
        return total


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover every process's rows, on CPU tensors (gloo),
    for which torch's ``SyncBatchNorm`` has no implementation (DDP refuses it on CPU).

    In a training step of a distributed run the batch mean and the biased variance about it
    are computed with differentiable all-reduces (in float32 at least), and the running statistics
    get the unbiased variance, as BatchNorm's; elsewhere (evaluation, one process) it is
    plain BatchNorm. Works for 1-D, 2-D and 3-D inputs (N, C, ...).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, ...) input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as BatchNorm's
                momentum = 1.0 / float(self.num_batches_tracked)
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # half precisions: statistics in fp32
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        dist.all_reduce(count)
        total = float(count)
        mean = _AllReduceSum.apply(x.sum(dims)) / total
        centred = x - mean.view(shape)
        variance = _AllReduceSum.apply((centred * centred).sum(dims)) / total
        out = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = variance.detach() * (total / max(total - 1, 1))
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return out.to(input.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> int:
    """Replace, in place, every BatchNorm layer under ``module`` that has trainable parameters
    by a synchronised one sharing its parameters and statistics (torch's ``SyncBatchNorm`` on
    GPUs, :class:`CPUSyncBatchNorm` on CPU); returns how many. Frozen BatchNorm (an
    encoder's, always in eval mode) is left alone."""
    synced_class = CPUSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm
    replaced = 0
    for name, child in module.named_children():
        trainable = any(parameter.requires_grad for parameter in child.parameters(recurse=False))
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, synced_class) and trainable:
            synced = synced_class(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            for key, tensor in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(synced, key, tensor)
            synced.train(child.training)
            setattr(module, name, synced)
            replaced += 1
        else:
            replaced += sync_batchnorm(child, device)
    return replaced


# ---- the process group -------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True in a process torchrun (or an equivalent launcher) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Distributed:
    """This process's :class:`Distributed` (``SINGLE`` without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    backend = dist.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       backend=backend, nodes=int(os.environ.get("GROUP_WORLD_SIZE", "1")), device=device)


def init_from_environment(device: torch.device) -> Distributed:
    """Join torchrun's process group (once per process) when launched as one of several
    processes; returns :func:`current`. A CUDA ``device`` means NCCL and GPU ``LOCAL_RANK``;
    otherwise gloo. Processes other than rank 0 log errors only.

    Raises:
        ConfigError: a device type without a distributed backend here.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return current()
    backend = BACKENDS.get(device.type)
    if backend is None or not dist.is_backend_available(backend):
        raise ConfigError(f"training on several processes needs the {backend or 'a'} backend for device "
                          f"{device.type!r}, which this torch build lacks; use --device cpu (gloo) or cuda (nccl)")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(_leave)
    parallel = current()
    if not parallel.is_main:
        logging.getLogger("mambaad_lib").setLevel(logging.ERROR)
    logger.info("process group: %d processes on %d node(s), backend %s", parallel.world_size, parallel.nodes,
                backend)
    return parallel


def process_device(device: torch.device) -> torch.device:
    """The device this process trains on: GPU ``LOCAL_RANK`` under NCCL, else ``device``."""
    parallel = current()
    return parallel.device if parallel.enabled and device.type == "cuda" else device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
