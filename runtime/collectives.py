"""Collectives of a torch.distributed run: rank helpers, reductions, gathers, agreement checks.

Every helper here is a no-op (or the identity) in a single process, so callers need no
`if distributed` branches. Starting the processes is `helper.distributed`'s job; it records each
rank's device here (`set_process`).
"""
from __future__ import annotations

import hashlib
from typing import Callable, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from runtime.errors import ConfigError, DistributedFailure

_state = {'device': None, 'local_rank': 0}


# --------------------------------------------------------------------------- rank helpers
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return _state['local_rank'] if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> Optional[torch.device]:
    """The device of this rank (None outside a distributed run)."""
    return _state['device'] if is_distributed() else None


def set_process(device_: Optional[torch.device], local_rank_: int) -> None:
    """Record this rank's device and local rank (called by the launcher once it joined)."""
    _state.update(device=device_, local_rank=local_rank_)


# --------------------------------------------------------------------------- collectives
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj) -> list:
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable):
    """`fn()` computed on rank 0 only and sent to every rank (any picklable result).

    A ConfigError on rank 0 is raised on every rank with the same message, so no rank waits for
    a result that never comes.
    """
    if world_size() == 1:
        return fn()
    payload = None
    if is_main():
        try:
            payload = ('ok', fn())
        except ConfigError as exc:
            payload = ('error', str(exc))
        except Exception as exc:
            broadcast_object(('crash', f'{type(exc).__name__}: {exc}'))
            raise
    kind, value = broadcast_object(payload)
    if kind == 'error':
        raise collective_error(value)
    if kind == 'crash':
        raise DistributedFailure(f'rank 0 failed ({value})')
    return value


def local_main_first(fn: Callable):
    """`fn()` on every rank, local rank 0 of each node first (downloads, caches); a ConfigError
    on any of them is raised on every rank."""
    if world_size() == 1:
        return fn()
    result, error = None, None
    if local_rank() == 0:
        try:
            result = fn()
        except ConfigError as exc:
            error = str(exc)
    errors = [e for e in all_gather_object(error) if e is not None]
    if errors:
        raise collective_error(errors[0])
    return result if local_rank() == 0 else fn()


def collective_error(message: str) -> ConfigError:
    """A ConfigError that every rank raises alike: only rank 0 needs to print it."""
    exc = ConfigError(message)
    exc.all_ranks = True
    return exc


def check_consistent(values: dict) -> None:
    """Every rank must pass equal `values`; else a ConfigError naming the first difference.

    Guards against ranks started with different options, data or teacher files, whose
    collectives would otherwise mismatch (a hang) or silently train different things.
    """
    gathered = all_gather_object(values)
    keys = sorted({k for g in gathered for k in g}, key=str)
    for key in keys:
        mine = gathered[0].get(key, '<missing>')
        for other_rank, other in enumerate(gathered[1:], 1):
            theirs = other.get(key, '<missing>')
            if theirs != mine:
                raise collective_error(
                    f'ranks disagree on {key}: rank 0 has {_short(mine)}, rank {other_rank} has '
                    f'{_short(theirs)}; start every rank with the same options, data and teacher')


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def gather_rows(tensors: Sequence[torch.Tensor], with_grad: bool = False) -> List[torch.Tensor]:
    """Each tensor concatenated over ranks along dim 0, in rank order (local batches may differ
    in size). `with_grad=True` keeps the gather differentiable (torch.distributed.nn all_gather:
    its backward sums, over ranks, the gradients that reach each rank's rows)."""
    world = world_size()
    if world == 1 or not tensors:
        return list(tensors)
    first = tensors[0]
    sizes = torch.zeros(world, dtype=torch.long, device=first.device)
    sizes[rank()] = first.shape[0]
    all_reduce_sum(sizes)
    sizes = sizes.tolist()
    longest = max(sizes)
    out = []
    for tensor in tensors:
        n = tensor.shape[0]
        if n != first.shape[0]:
            raise ValueError('gather_rows: tensors of one call must share their first dimension')
        if n < longest:
            tensor = torch.cat([tensor, tensor.new_zeros((longest - n,) + tuple(tensor.shape[1:]))])
        if with_grad and tensor.requires_grad:
            from torch.distributed.nn.functional import all_gather as differentiable_all_gather
            parts = differentiable_all_gather(tensor.contiguous())
        else:
            tensor = tensor.detach().contiguous()
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor)
        out.append(torch.cat([part[:size] for part, size in zip(parts, sizes)]))
    return out


def wrap_ddp(module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel without a buffer broadcast at every forward pass (the caller syncs
    buffers with `broadcast_buffers`); rank 0's parameters and buffers are sent once, here."""
    import inspect
    from torch.nn.parallel import DistributedDataParallel

    kwargs = dict(device_ids=None, find_unused_parameters=find_unused_parameters)
    if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel).parameters:
        kwargs['forward_sync_buffers'] = False
    else:
        kwargs['broadcast_buffers'] = False
    wrapped = DistributedDataParallel(module, **kwargs)
    broadcast_buffers(module)
    return wrapped


@torch.no_grad()
def broadcast_buffers(*modules: nn.Module, src: int = 0) -> None:
    """Persistent buffers (BN running statistics, ...) of rank `src` on every rank."""
    if world_size() == 1:
        return
    for module in modules:
        for sub in module.modules():
            skip = getattr(sub, '_non_persistent_buffers_set', set())
            for name, buf in sub._buffers.items():
                if buf is not None and name not in skip:
                    dist.broadcast(buf, src=src)


def state_digest(*states) -> str:
    """SHA-1 of nested state dicts / lists / tensors (values and dtypes, in order)."""
    digest = hashlib.sha1()

    def feed(value):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f'{t.dtype}{tuple(t.shape)}'.encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in value:
                digest.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        else:
            digest.update(repr(value).encode())

    for state in states:
        feed(state)
    return digest.hexdigest()


def states_identical(*states) -> bool:
    """True when every rank holds bitwise the same `states` (one small all_gather)."""
    return len(set(all_gather_object(state_digest(*states)))) == 1


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ...: every sample on exactly one rank, no padding (unlike
    DistributedSampler), so summed counts over ranks count each evaluation sample once."""

    def __init__(self, length: int, rank_: Optional[int] = None, world: Optional[int] = None):
        self.length = length
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))
