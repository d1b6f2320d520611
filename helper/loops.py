"""Training and evaluation loops shared by every method.

`train_epoch` runs any objective: plain cross-entropy for teachers, `DistillObjective` for
students. The objective knows nothing method-specific: it asks the distiller what to compute and
adds `beta * sum(terms)` to `cls * CE + div * KD`.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import Batch, Distiller, ModelOutputs
from distiller_zoo.kd import kd_loss
from models.taps import open_tap
from runtime import collectives


def to_batch(data, device, memory_format=torch.contiguous_format) -> Batch:
    images, targets, *extra = data
    move = lambda t: t.to(device, non_blocking=True)
    return Batch(move(images).contiguous(memory_format=memory_format), move(targets),
                 tuple(move(e) for e in extra))


@dataclass(frozen=True)
class StepOptions:
    """--amp, --channels_last and --compile, as the loops apply them: the forward passes
    (teacher, student, losses) under bf16 autocast, the images in channels_last format (the
    models are converted and compiled by the caller), and with CUDA graphs a step boundary marked
    before each batch. The backward pass and the optimiser step run outside autocast."""
    amp: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False

    @classmethod
    def from_opt(cls, opt) -> 'StepOptions':
        return cls(bool(getattr(opt, 'amp', False)), bool(getattr(opt, 'channels_last', False)),
                   getattr(opt, 'compile', None) in ('reduce-overhead', 'max-autotune'))

    def begin_step(self) -> None:
        """Tell CUDA-graph trees a new iteration starts (the previous one's outputs are dead)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def batch(self, data, device) -> Batch:
        return to_batch(data, device, torch.channels_last if self.channels_last else torch.contiguous_format)

    def autocast(self, device):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates
    bf16 and an autocast forward can be an order of magnitude slower than float32."""
    checks = [getattr(torch.cpu, name, None) for name in ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
    return any(check() for check in checks if check is not None)


def amp_cpu_note(amp: bool, device, native_bf16: Optional[bool] = None) -> Optional[str]:
    """The one line printed at start when --amp would run bf16 on a CPU without native support
    (None otherwise). `native_bf16`: the CPU's answer, asked when not given."""
    if not amp or torch.device(device).type != 'cpu':
        return None
    if cpu_has_native_bf16() if native_bf16 is None else native_bf16:
        return None
    return (f'note: --amp on a CPU without native bf16 (torch CPU capability '
            f'{torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX): bf16 is emulated here '
            f'and can be many times slower than float32; drop --amp on this machine')


class CrossEntropyObjective:
    """Teacher training: cross-entropy only."""

    find_unused_parameters = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.module = model  # what a distributed run wraps in DistributedDataParallel
        self.forward = model

    def distribute(self, wrap) -> None:
        """Route the training forward pass through `wrap(self.module)` (DistributedDataParallel)."""
        self.forward = wrap(self.module)

    def train(self) -> None:
        self.model.train()

    def __call__(self, batch: Batch):
        logits = self.forward(batch.images)
        loss = F.cross_entropy(logits, batch.targets)
        return loss, {'loss_cls': loss.detach()}, logits


def model_outputs(model: nn.Module, images: torch.Tensor, distiller: Distiller) -> ModelOutputs:
    """One training forward of `model`, with what the distiller asked for: the is_feat features
    (`needs_feats`), and the block-level layer outputs (`taps = 'blocks'`), recorded by hooks
    (`open_tap`: the model's kept tap if compiled, else hooks attached for this forward only)."""
    kwargs = dict(is_feat=True, preact=distiller.needs_preact) if distiller.needs_feats else {}
    if distiller.taps == 'blocks':
        with open_tap(model, model.block_layer_names()) as tap:
            out = model(images, **kwargs)
            blocks = tap.outputs
    elif distiller.taps is None:
        out, blocks = model(images, **kwargs), None
    else:
        raise ValueError(f"unknown taps {distiller.taps!r} of {type(distiller).__name__}; valid: 'blocks'")
    if distiller.needs_feats:
        feats, logits = out
        return ModelOutputs(logits=logits, feats=feats, blocks=blocks)
    return ModelOutputs(logits=out, blocks=blocks)


def find_unused_parameters(distiller: Distiller) -> bool:
    """Whether some trainable parameter may get no gradient in a step (DistributedDataParallel
    must then look for them). The student's own classifier is unused when the method replaces the
    head (`student_logits` overridden: SimKD); a distiller may also say so itself with a
    `find_unused_parameters` attribute. tests/test_distributed.py checks this rule for every method.
    """
    flag = getattr(distiller, 'find_unused_parameters', None)
    if flag is not None:
        return bool(flag)
    return type(distiller).student_logits is not Distiller.student_logits


class DistillStep(nn.Module):
    """Student + distiller as one module: the unit one DistributedDataParallel keeps in sync.

    forward(batch, teacher_out) -> (loss, terms, logits): cls * CE + div * KD(T) + beta * (the
    distiller's terms). The teacher is not a submodule: it is never wrapped or trained.
    """

    def __init__(self, student: nn.Module, distiller: Distiller, opt):
        super().__init__()
        self.student, self.distiller = student, distiller
        self.cls_w, self.div_w, self.beta, self.kd_T = opt.cls, opt.div, opt.beta, opt.kd_T

    def forward(self, batch: Batch, teacher_out: ModelOutputs):
        student_out = model_outputs(self.student, batch.images, self.distiller)
        logits = self.distiller.student_logits(student_out)
        loss_cls = F.cross_entropy(logits, batch.targets)
        loss = self.cls_w * loss_cls
        terms = {'loss_cls': loss_cls.detach()}
        if self.div_w:
            loss_div = kd_loss(logits, teacher_out.logits, self.kd_T)
            loss = loss + self.div_w * loss_div
            terms['loss_div'] = loss_div.detach()
        method_terms = self.distiller(student_out, teacher_out, batch)
        for name, value in method_terms.items():
            loss = loss + self.beta * value
            terms[f'loss_{name}'] = value.detach()
        return loss, terms, logits


class DistillObjective:
    """cls * CE + div * KD(T) + beta * (the distiller's terms); the teacher stays frozen."""

    def __init__(self, student: nn.Module, teacher: nn.Module, distiller: Distiller, opt):
        self.student, self.teacher, self.distiller = student, teacher, distiller
        self.module = DistillStep(student, distiller, opt)
        self.forward = self.module
        self.find_unused_parameters = find_unused_parameters(distiller)

    def distribute(self, wrap) -> None:
        """Route the student step through `wrap(self.module)` (DistributedDataParallel)."""
        self.forward = wrap(self.module)

    def train(self) -> None:
        self.student.train()
        self.distiller.train()
        self.teacher.eval()  # never in train mode: its BN statistics must not move

    def __call__(self, batch: Batch):
        with torch.no_grad():
            teacher_out = self.distiller.prepare_teacher(model_outputs(self.teacher, batch.images, self.distiller))
        return self.forward(batch, teacher_out)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk=(1, 5)) -> list:
    """Number of correct predictions for each k (as tensors, so no device sync here)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets.unsqueeze(1))
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in topk]


class _Sums:
    """Running sums kept on the device; read (one sync) only when printing or at epoch end.

    In a distributed run `means()` sums the values and counts over every rank first (one
    all_reduce; every rank must call it at the same point), so every rank, and the log, sees the
    means over all processes' samples.
    """

    def __init__(self):
        self.values = {}
        self.count = 0

    def add(self, values: dict, n: int) -> None:
        for key, value in values.items():
            value = value.detach().float() * n
            self.values[key] = self.values[key] + value if key in self.values else value
        self.count += n

    def totals(self) -> tuple:
        """(sums, count) over every rank: plain floats and an int."""
        if collectives.world_size() == 1:
            return {k: float(v) for k, v in self.values.items()}, self.count
        keys = sorted({k for ks in collectives.all_gather_object(sorted(self.values)) for k in ks})
        device = next(iter(self.values.values())).device if self.values else collectives.device()
        zero = torch.zeros((), device=device)
        vector = torch.stack([self.values.get(k, zero).to(device).double() for k in keys]
                             + [torch.tensor(float(self.count), device=device, dtype=torch.float64)])
        collectives.all_reduce_sum(vector)
        values = vector.tolist()
        return dict(zip(keys, values[:-1])), int(round(values[-1]))

    def means(self) -> dict:
        """Means over every rank; `self.total_count` is then the sample count behind them."""
        if collectives.world_size() == 1:
            self.total_count = self.count
            return {k: float(v) / max(self.count, 1) for k, v in self.values.items()}
        totals, self.total_count = self.totals()
        return {k: v / max(self.total_count, 1) for k, v in totals.items()}


def _print_now(message: str) -> None:
    print(message, flush=True)  # progress must show up at once in redirected logs too


def train_step(batch: Batch, objective, optimizer, device, step_options: StepOptions = StepOptions()) -> tuple:
    """One optimisation step on `batch` (forward under the step options, backward, SGD step);
    returns the objective's (loss, terms, logits)."""
    step_options.begin_step()
    with step_options.autocast(device):
        loss, terms, logits = objective(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, terms, logits


def train_epoch(epoch: int, loader, objective, optimizer, device, print_freq: int,
                total_epochs: int, log=_print_now, step_options: StepOptions = StepOptions()) -> dict:
    """One pass over `loader`; returns mean loss terms, top-1/top-5 (%) and throughput."""
    objective.train()
    sums = _Sums()
    start = time.time()
    n_batches = len(loader)
    for step, data in enumerate(loader, 1):
        batch = step_options.batch(data, device)
        loss, terms, logits = train_step(batch, objective, optimizer, device, step_options)
        top1, top5 = accuracy(logits.detach().float(), batch.targets)
        n = batch.targets.shape[0]
        sums.add({**terms, 'loss': loss, 'top1': top1 * 100.0 / n, 'top5': top5 * 100.0 / n}, n)
        if step % print_freq == 0 or step == n_batches:
            means = sums.means()
            if not math.isfinite(means['loss']):  # the same on every rank: all stop together
                raise collectives.collective_error(f'the loss became {means["loss"]} in epoch {epoch} by batch {step}; '
                                  'lower --learning_rate or the loss weights (-c/-d/-b); '
                                  'the last good checkpoint is kept')
            elapsed = time.time() - start
            rate = sums.total_count / max(elapsed, 1e-9)
            left = elapsed / step * (n_batches - step) + elapsed / step * n_batches * (total_epochs - epoch)
            if collectives.is_main():
                log(f'epoch {epoch} [{step}/{n_batches}] loss {means["loss"]:.4f} '
                    f'top1 {means["top1"]:.2f} {rate:.0f} img/s, about {left / 60:.1f} min left')
    means = sums.means()
    elapsed = time.time() - start
    means['images_per_s'] = sums.total_count / max(elapsed, 1e-9)
    means['time'] = elapsed
    return means


@torch.no_grad()
def validate(predict, loader, device, step_options: StepOptions = StepOptions()) -> dict:
    """Top-1 / top-5 (%) and cross-entropy of `predict(images) -> logits` over `loader`.

    Distributed: each rank evaluates its shard (runtime.collectives.ShardSampler: every sample on
    exactly one rank) and the sums and counts are added over ranks, so the result is that of one
    process evaluating the whole set.
    """
    sums = _Sums()
    for data in loader:
        batch = step_options.batch(data, device)
        step_options.begin_step()
        with step_options.autocast(device):
            logits = predict(batch.images)
        logits = logits.float()
        n = batch.targets.shape[0]
        top1, top5 = accuracy(logits, batch.targets)
        loss = F.cross_entropy(logits, batch.targets)
        sums.add({'loss': loss, 'top1': top1 * 100.0 / n, 'top5': top5 * 100.0 / n}, n)
    return sums.means()
