"""Process groups and parallel wrapping for torchrun. One process and no torchrun is the plain case.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 we join the process group
(nccl on GPUs, gloo on CPU) and each process takes the GPU of its local rank.

The model knows nothing of parallelism: :func:`wrap_model` puts PyTorch's DDP or FSDP2
(``fully_shard``) around it from outside, and the helpers here hide the difference from the
training loop (gradient sync during accumulation, clipping, full and sharded state dicts).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import device_type, resolve_device
from .errors import PeerFailure, print_error


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 600,
                     on_failure: Callable[[str], None] | None = None) -> DistInfo:
    """Join torchrun's process group; ``timeout_s`` bounds how long any collective waits for the others.

    Setting the group up fails in one line (PeerFailure) within about ``timeout_s``, also where the setup
    itself would hang (a watchdog ends the process); ``on_failure`` is told the message first."""
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type(device) == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device_type(device) == "cuda" else "gloo"
        # device_id binds the NCCL communicator to this GPU up front (eager init, no guessing later).
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        with _watchdog(rank, timeout_s, on_failure):
            try:
                dist.init_process_group(backend=backend, timeout=timeout, **_attempt_store(rank, world_size, timeout),
                                        **kwargs)
            except Exception as e:  # a peer that died starting, a refused connection, a store that timed out
                failure = setup_failure(e, rank, timeout_s)
                if on_failure is not None:
                    on_failure(str(failure))
                raise failure from e
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dict:
    """The store a group under torchrun's restarts sets itself up through: its own keys for each attempt.

    torchrun (c10d rendezvous) hands its workers one TCPStore for the whole job, so a restarted group read the
    keys its dead predecessors wrote under the same names: gloo connected to a dead peer's address ("connectFullMesh
    ... Connection refused") or to a live process of the new group with a stale handshake, and hung past any
    timeout. On one node every worker sees the same restart count, which then names the attempt's keys; across
    nodes the counts may differ (torchrun's own default applies; see docs/distributed.md)."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE", "1") != "1":
        return {}  # no torchrun, its store not shared (a fresh one per attempt), or several nodes
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size, is_master=False, timeout=timeout)
    prefix = f"gpt2lab/{env.get('TORCHELASTIC_RUN_ID', '')}/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return {"store": dist.PrefixStore(prefix, store), "rank": rank, "world_size": world_size}


@contextlib.contextmanager
def _watchdog(rank: int, timeout_s: float, on_failure: Callable[[str], None] | None):
    """End this process with a one-line error if the block runs much longer than ``timeout_s``: a group setup
    that hangs cannot be interrupted from Python, and torchrun sees a live process as a healthy one."""
    def give_up() -> None:
        message = (f"rank {rank}: setting up the process group did not finish within train.dist_timeout="
                   f"{timeout_s:g}s; a process of the job hung while starting. The job stops; under torchrun "
                   "--max-restarts it is started again")
        if on_failure is not None:
            with contextlib.suppress(Exception):
                on_failure(message)
        print_error(message)
        os._exit(1)

    timer = threading.Timer(timeout_s * 1.1 + 5, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _first_line(e: BaseException) -> str:
    """An exception's first line, for a one-line error (its type where it has no text)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def setup_failure(e: BaseException, rank: int, timeout_s: float) -> PeerFailure:
    first = _first_line(e)
    return PeerFailure(
        f"rank {rank}: could not set up the process group with the other processes ({type(e).__name__}: {first}). "
        f"A process of the job died or hung while starting, or train.dist_timeout={timeout_s:g}s passed. The job "
        "stops; under torchrun --max-restarts it is started again, else run it again with --resume"
    )


def is_comm_failure(e: BaseException) -> bool:
    """Whether ``e`` came from a collective that lost a peer or timed out (gloo raises plain RuntimeErrors)."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")
    )


def peer_failure(e: BaseException, info: DistInfo, timeout_s: float) -> PeerFailure:
    first = _first_line(e)
    return PeerFailure(
        f"rank {info.rank}: lost contact with the other processes ({first}). Another rank died or hung (see its "
        f"log), or a collective waited longer than train.dist_timeout={timeout_s:g}s. The job stops; continue "
        "from the last checkpoint with --resume"
    )


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.AVG if t.is_cuda else dist.ReduceOp.SUM)
        if not t.is_cuda:  # gloo has no AVG
            t /= info.world_size
    return t


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (small, trusted, from our own processes), in rank order."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (small, trusted, from our own processes)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- wrapping -----------------------------------------------------------------------------


def wrap_model(model: torch.nn.Module, info: DistInfo, parallel: str, param_dtype: torch.dtype) -> torch.nn.Module:
    """The module to train: ``model`` itself (one process), DDP around it, or ``model`` sharded in place by FSDP2.

    FSDP2: each transformer block is one unit (gathered just before it runs, freed after); the
    root unit holds the embeddings, the final LayerNorm and the LM head, which is tied to the
    token embedding and so must live in the same unit (an untied head, ``model.tie_head=false``,
    lives there too). With ``param_dtype`` bfloat16 the
    mixed-precision policy computes in bf16 and reduces gradients in fp32; the sharded master
    weights and the optimizer state stay fp32.
    """
    if not info.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        return shard_model(model, init_device_mesh(device_type(info.device), (info.world_size,)), param_dtype)
    from torch.nn.parallel import DistributedDataParallel as DDP

    # broadcast_buffers=False: the model's one buffer (vocab_bias) is a constant every rank builds
    # alike, so DDP need not broadcast it before every forward pass
    return DDP(model, device_ids=[info.local_rank] if device_type(info.device) == "cuda" else None,
               broadcast_buffers=False)


def shard_model(model: torch.nn.Module, mesh, param_dtype: torch.dtype) -> torch.nn.Module:
    """FSDP2 over ``mesh``, in place (see :func:`wrap_model`): one unit per block, the root holding the rest."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype != torch.float32 \
        else MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


@contextlib.contextmanager
def grad_sync(train_model: torch.nn.Module, sync: bool):
    """Backward inside this block all-reduces (DDP) or reduce-scatters (FSDP2) gradients only if ``sync``.

    Micro-batches before the last one of an accumulation keep their gradients local, so the
    communication happens once per optimizer step.
    """
    if sync:
        yield
    elif hasattr(train_model, "no_sync"):  # DDP
        with train_model.no_sync():
            yield
    elif hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            train_model.set_requires_gradient_sync(True)
    else:
        yield


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns the norm before clipping as a plain tensor (same on every rank)."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm  # FSDP2: sharded grads give a DTensor norm


# --- state dicts --------------------------------------------------------------------------


def full_state_dict(model: torch.nn.Module) -> dict:
    """The unsharded weights. FSDP2: a collective (every rank calls it); rank 0 gets CPU tensors, others ``{}``."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Model and optimizer state keyed by parameter name, each rank holding its shards, for
    ``torch.distributed.checkpoint``."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def load_sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path) -> None:
    """Read a ``torch.distributed.checkpoint`` folder into ``model``/``optimizer``, resharding to this world size.

    Works sharded (FSDP2, any number of processes) and unsharded (one process, or DDP replicas).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = sharded_state(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP warns that it loads without a process group, as meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim_state: dict) -> None:
    """Load an unsharded checkpoint (full weights, and ``optimizer.state_dict()`` of an unwrapped model,
    keyed by position) into a model and optimizer that may be sharded by FSDP2."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = {id(p): n for n, p in model.named_parameters()}  # the same names and order as the plain model
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {order[i]: s for i, s in optim_state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in optim_state["param_groups"]],
    }
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=by_name,
                   options=StateDictOptions(full_state_dict=True))
