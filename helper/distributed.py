"""Starting the processes of a torch.distributed run.

Two ways to start N processes, one code path once they run (see docs/DISTRIBUTED.md):

* `--multiprocessing-distributed`: this process spawns `--nproc` workers (default: one per visible
  GPU) that meet at `--dist-url`;
* `torchrun ... train_student.py ...`: the RANK / WORLD_SIZE / LOCAL_RANK variables are set and
  every worker joins with env:// (several nodes possible).

NCCL on GPUs, gloo on CPU, so the tests run the same code on CPU. Once a rank has joined, the
collectives it uses are `runtime.collectives`.
"""
from __future__ import annotations

import datetime
import errno
import multiprocessing
import multiprocessing.connection
import os
import socket
import sys
import time
import traceback
from typing import Callable, List
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from runtime import collectives
from runtime.errors import ConfigError, DistributedFailure

TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')
DEFAULT_TIMEOUT_S = 1800

def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


# --------------------------------------------------------------------------- start-up
def _rank_device(requested: str, local: int) -> torch.device:
    """cuda:<local rank> when --device asks for CUDA (or 'auto' finds it), else the CPU."""
    wants_cuda = requested.startswith('cuda') or (requested == 'auto' and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device('cpu')
    count = torch.cuda.device_count()
    if count == 0:
        raise ConfigError(f'--device {requested} asked for CUDA but none is available; use --device cpu')
    if local >= count:
        raise ConfigError(f'local rank {local} has no GPU of its own ({count} visible); start at most '
                          f'{count} processes per node (--nproc / --nproc_per_node)')
    dev = torch.device('cuda', local)
    torch.cuda.set_device(dev)
    return dev


def _init_error(exc: Exception, where: str, timeout_s: float) -> ConfigError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    lower = text.lower()
    if 'address already in use' in lower or 'eaddrinuse' in lower or 'errno 98' in lower:
        return ConfigError(f'{where}: the port is in use (another run?); pick a free port')
    if 'timed out' in lower or 'timeout' in lower:
        return ConfigError(f'distributed start-up timed out after {timeout_s:g} s at {where}: not every '
                           'rank joined (check the address, the process count, or raise --dist_timeout)')
    return ConfigError(f'distributed start-up failed at {where}: {first}')


def init_process(requested_device: str, rank_: int, world: int, local: int, init_method: str,
                 where: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group; returns this rank's device. Failures become one-line ConfigErrors."""
    dev = _rank_device(requested_device, local)
    backend = 'nccl' if dev.type == 'cuda' else 'gloo'
    kwargs = dict(backend=backend, init_method=init_method,
                  timeout=datetime.timedelta(seconds=timeout_s))
    if init_method != 'env://':
        kwargs.update(rank=rank_, world_size=world)
    try:
        dist.init_process_group(**kwargs)
    except Exception as exc:  # DistNetworkError, DistStoreError, RuntimeError, ValueError
        raise _init_error(exc, where, timeout_s) from None
    collectives.set_process(dev, local)
    if rank_ != 0:  # progress, notes and summaries come from rank 0 only
        sys.stdout = open(os.devnull, 'w')
    return dev


def cleanup() -> None:
    if collectives.is_distributed():
        dist.destroy_process_group()
    collectives.set_process(None, 0)


def check_url_free(url: str) -> None:
    """Fail before spawning when the --dist-url port on this machine is taken (or its file,
    for file://, is left from an earlier run: the file store would reuse it)."""
    parsed = urlparse(url)
    if parsed.scheme == 'file':
        if os.path.exists(parsed.path):
            raise ConfigError(f'--dist-url {url}: the file exists (left by an earlier run?); delete '
                              'it or name a new file')
        return
    if parsed.scheme != 'tcp':
        return
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise ConfigError(f'--dist-url {url}: give tcp://HOST:PORT')
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        return  # unresolvable here: init reports it
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f'--dist-url {url}: port {port} is in use (another run?); pick a free '
                                  f'port, e.g. --dist-url tcp://{host}:{free_port(host)}') from None
            # EADDRNOTAVAIL: not an address of this machine (another node hosts rank 0)


def free_port(host: str = '127.0.0.1') -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- launching
def launch(entry: Callable, opt):
    """Run `entry(opt)` as the options and the environment ask; returns rank 0's result.

    torchrun variables set: this process is one rank (env://). `--multiprocessing-distributed`:
    spawn `--nproc` ranks here and wait for them. Otherwise: call `entry(opt)` in this process.
    """
    timeout_s = getattr(opt, 'dist_timeout', DEFAULT_TIMEOUT_S)
    if launched_by_torchrun():
        rank_ = int(os.environ['RANK'])
        try:
            share_per_process(opt, _torchrun_processes_per_node(), announce=rank_ == 0)
        except ConfigError as exc:
            exc.quiet = rank_ != 0  # every rank finds it alike: rank 0 says it
            raise
        if getattr(opt, 'multiprocessing_distributed', False) and rank_ == 0:
            print('note: started by torchrun; --multiprocessing-distributed ignored')
        where = (f"torchrun's rendezvous (MASTER_ADDR {os.environ.get('MASTER_ADDR')}, "
                 f"MASTER_PORT {os.environ.get('MASTER_PORT')})")
        init_process(opt.device, rank_, int(os.environ['WORLD_SIZE']), int(os.environ['LOCAL_RANK']),
                     'env://', where, timeout_s)
        try:
            return entry(opt)
        except ConfigError as exc:
            if rank_ != 0:  # an error every rank found is printed by rank 0 only
                if getattr(exc, 'all_ranks', False):
                    exc.quiet = True
                else:
                    exc.args = (f'rank {rank_}: {exc}',)
            raise
        finally:
            cleanup()
    if not getattr(opt, 'multiprocessing_distributed', False):
        return entry(opt)
    nproc = opt.nproc if getattr(opt, 'nproc', None) is not None else torch.cuda.device_count()
    if nproc < 1:
        raise ConfigError('--multiprocessing-distributed found no GPU; pass --nproc N to train with '
                          'N CPU processes (gloo)')
    share_per_process(opt, nproc, announce=True)
    check_url_free(opt.dist_url)
    results = spawn(_spawned_entry, nproc, (entry, opt, nproc))
    return results.get(0)


def share_per_process(opt, processes_per_node: int, announce: bool) -> None:
    """The older repos' rule: `--batch_size` and `--num_workers` are given per node and divided
    over its processes (the batch exactly, the workers rounded up), so a recipe keeps its batch
    and learning rate on any number of GPUs. The given values stay in `batch_size_per_node` and
    `num_workers_per_node`."""
    if opt.batch_size % processes_per_node:
        raise ConfigError(f'--batch_size {opt.batch_size} does not divide over the {processes_per_node} '
                          f'processes per node; give a multiple of {processes_per_node}')
    opt.batch_size_per_node, opt.num_workers_per_node = opt.batch_size, opt.num_workers
    opt.batch_size = opt.batch_size // processes_per_node
    opt.num_workers = -(-opt.num_workers // processes_per_node)
    if announce:
        print(f'--batch_size {opt.batch_size_per_node} and --num_workers {opt.num_workers_per_node} are '
              f'per node: each of its {processes_per_node} processes takes --batch_size {opt.batch_size}, '
              f'--num_workers {opt.num_workers}', flush=True)


def _torchrun_processes_per_node() -> int:
    value = os.environ.get('LOCAL_WORLD_SIZE', '')
    if not value.isdigit() or int(value) < 1:
        raise ConfigError('LOCAL_WORLD_SIZE (the processes per node) is not set; launch with torchrun, '
                          'which sets it, or set it beside RANK / WORLD_SIZE / LOCAL_RANK')
    return int(value)


def _spawned_entry(index: int, entry: Callable, opt, nproc: int):
    dev = init_process(opt.device, index, nproc, index, opt.dist_url, f'--dist-url {opt.dist_url}',
                       getattr(opt, 'dist_timeout', DEFAULT_TIMEOUT_S))
    if dev.type == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
        # N CPU ranks share the cores (torchrun sets OMP_NUM_THREADS=1 for the same reason).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        return entry(opt)
    finally:
        cleanup()


def _child(index: int, fn: Callable, args: tuple, queue) -> None:
    """Body of a spawned process: report the result or the error to the parent, never print it."""
    try:
        result = fn(index, *args)
    except ConfigError as exc:
        queue.put(('error', index, str(exc)))
        sys.stdout.flush()
        os._exit(2)
    except DistributedFailure as exc:
        queue.put(('failure', index, str(exc)))
        sys.stdout.flush()
        os._exit(1)
    except BaseException as exc:  # a bug, or a collective broken by another rank's death
        queue.put(('crash', index, ''.join(traceback.format_exception(exc))))
        sys.stdout.flush()
        os._exit(1)
    queue.put(('result', index, result))
    sys.stdout.flush()
    sys.stderr.flush()


def spawn(fn: Callable, nprocs: int, args: tuple = (), poll_s: float = 0.1) -> dict:
    """Run `fn(index, *args)` in `nprocs` spawned processes; returns {index: result}.

    The first process to fail ends all others (SIGTERM, then SIGKILL) and the failure is raised
    here as one line: its ConfigError as a ConfigError, a crash (its traceback is printed first) or
    a death by signal / exit status as a DistributedFailure. Never waits on a dead rank.
    """
    ctx = multiprocessing.get_context('spawn')
    queue = ctx.SimpleQueue()
    processes = [ctx.Process(target=_child, args=(i, fn, args, queue), daemon=False)
                 for i in range(nprocs)]
    for process in processes:
        process.start()
    reports, failed = {}, None

    def drain():
        while not queue.empty():
            kind, index, payload = queue.get()
            reports.setdefault(index, (kind, payload))

    try:
        while True:
            running = [p.sentinel for p in processes if p.exitcode is None]
            if running:
                multiprocessing.connection.wait(running, poll_s)
            drain()
            # checked after the last rank is seen gone too: a rank may exit between two looks
            failed = [i for i, p in enumerate(processes) if p.exitcode not in (None, 0)] or None
            if failed is not None or not running:
                break
    finally:
        survivors = [p for p in processes if p.exitcode is None]
        for process in survivors:
            process.terminate()
        deadline = time.time() + 10
        for process in survivors:
            process.join(max(0.1, deadline - time.time()))
            if process.exitcode is None:
                process.kill()
                process.join()
        drain()
    if failed is None:
        missing = [i for i in range(nprocs) if reports.get(i, ('',))[0] != 'result']
        if missing:
            raise DistributedFailure(f'rank {missing[0]} ended without a result')
        return {i: payload for i, (kind, payload) in reports.items()}
    raise _failure(failed, processes, reports, nprocs)


def _failure(failed: List[int], processes, reports: dict, nprocs: int) -> Exception:
    """The root cause among the first failed processes: a user error, a death, then a crash."""
    errors = {i: reports[i][1] for i in failed if reports.get(i, ('',))[0] in ('error', 'failure')}
    errors.update({i: p for i, (k, p) in reports.items() if k in ('error', 'failure') and i not in errors})
    if errors:
        index = min(errors)
        message = errors[index]
        kind = reports[index][0]
        if index != 0 and len(set(errors.values())) > 1:
            message = f'rank {index}: {message}'
        return ConfigError(message) if kind == 'error' else DistributedFailure(message)
    deaths = [i for i in failed if i not in reports]
    if deaths:
        index = deaths[0]
        code = processes[index].exitcode
        how = f'signal {-code}' if code < 0 else f'exit status {code}'
        return DistributedFailure(f'rank {index} of {nprocs} died ({how}); every other rank was stopped')
    index = failed[0]
    text = reports[index][1]
    print(text, file=sys.stderr, end='' if text.endswith('\n') else '\n')
    last = text.strip().splitlines()[-1] if text.strip() else 'unknown error'
    return DistributedFailure(f'rank {index} of {nprocs} failed ({last}); every other rank was stopped')


