"""CKA math: Gram products and centred kernels, estimators and their accumulator, the group
values of a student x teacher matrix, contiguous grouping and the student-teacher pairing, and
the CKA figures.

Imports nothing of the project (torch, numpy and matplotlib only).
"""
from cka.accumulator import CKAAccumulator, hsic_terms
from cka.blocks import REDUCTIONS, block_masks, group_values
from cka.estimators import cka, cka_from_grams, cka_matrix, grouped_normalized_grams, normalized_grams
from cka.grams import flatten_features, group_gram, width_groups
from cka.grouping import (OBJECTIVES, PairedGroups, auto_n_groups, boundary_stability, contiguous_groups, even_split,
                          group_boundaries, grouping_objective, groups_from_sizes, groups_to_json, pair_groups,
                          proportional_split, random_split, silhouette, validate_groups)
from cka.heatmap import (draw_matrix, group_colour, matrices_figure, runs_figure, save_png, student_teacher_figure,
                         teacher_caption, teacher_figure)
from cka.kernels import KERNELS, centre_gram, inverse_order, min_cka_samples

__all__ = ['CKAAccumulator', 'KERNELS', 'OBJECTIVES', 'PairedGroups', 'REDUCTIONS', 'auto_n_groups', 'block_masks',
           'boundary_stability', 'centre_gram', 'cka', 'cka_from_grams', 'cka_matrix', 'contiguous_groups',
           'draw_matrix', 'even_split', 'flatten_features', 'group_boundaries', 'group_colour', 'group_gram',
           'group_values', 'grouped_normalized_grams', 'grouping_objective', 'groups_from_sizes', 'groups_to_json',
           'hsic_terms', 'inverse_order', 'matrices_figure', 'min_cka_samples', 'normalized_grams', 'pair_groups',
           'proportional_split', 'random_split', 'runs_figure', 'save_png', 'silhouette', 'student_teacher_figure',
           'teacher_caption', 'teacher_figure', 'validate_groups', 'width_groups']
