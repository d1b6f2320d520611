"""One value per paired group: the block of a student x teacher CKA matrix whose rows are student
group k and whose columns are teacher group k, reduced to CKA_Gk.

Pure torch: this module imports nothing from the project. The CKA-group term reduces each
training batch's matrix this way and the CKA monitor its pooled matrix, with the same masks.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["REDUCTIONS", "block_masks", "group_values"]

REDUCTIONS = ("mean", "min", "max")


def block_masks(student_groups: Sequence[Sequence[int]], teacher_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """(n, L_s, L_t) booleans, mask k true on the block of student group k (rows) and teacher group
    k (columns): contiguous groups of layer indices, paired in order; every layer of both sides
    belongs to one group."""
    if len(student_groups) != len(teacher_groups):
        raise ValueError(f'{len(student_groups)} student groups for {len(teacher_groups)} teacher groups')
    num_s = sum(len(g) for g in student_groups)
    num_t = sum(len(g) for g in teacher_groups)
    masks = torch.zeros(len(teacher_groups), num_s, num_t, dtype=torch.bool)
    for k, (gs, gt) in enumerate(zip(student_groups, teacher_groups)):
        masks[k, gs[0]:gs[-1] + 1, gt[0]:gt[-1] + 1] = True
    return masks


def group_values(matrix: torch.Tensor, masks: torch.Tensor, reduce: str = "mean",
                 sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CKA_Gk of each block: the mean, min or max (`reduce`) of the entries of `matrix` (L_s x L_t)
    under mask k (`block_masks`, rows and columns in the matrix's order). `sizes`: the masks' entry
    counts, for a caller that reduces a matrix every step with the same masks; without it they
    are counted here. Reads nothing back to the host."""
    blocks = matrix.unsqueeze(0)
    if reduce == "mean":
        return (blocks * masks).sum(dim=(1, 2)) / (masks.sum(dim=(1, 2)) if sizes is None else sizes)
    if reduce == "min":
        return blocks.masked_fill(~masks, float("inf")).amin(dim=(1, 2))
    if reduce == "max":
        return blocks.masked_fill(~masks, float("-inf")).amax(dim=(1, 2))
    raise ValueError(f"unknown reduce {reduce!r}; valid: {', '.join(REDUCTIONS)}")
