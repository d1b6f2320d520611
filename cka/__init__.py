"""CKA math: estimators and their accumulator, contiguous grouping and the student-teacher
pairing, and the CKA figures.

Imports nothing of the project (torch, numpy and matplotlib only).
"""
from cka.estimators import (CKAAccumulator, KERNELS, cka, cka_from_grams, cka_matrix, grouped_normalized_grams, hsic_terms,
                            min_cka_samples, normalized_grams, width_groups)
from cka.grouping import (OBJECTIVES, PairedGroups, auto_n_groups, boundary_stability, contiguous_groups, even_split,
                          group_boundaries, grouping_objective, groups_from_sizes, groups_to_json, pair_groups,
                          proportional_split, random_split, silhouette, validate_groups)
from cka.heatmap import (draw_matrix, group_colour, matrices_figure, runs_figure, save_png, student_teacher_figure,
                         teacher_caption, teacher_figure)

__all__ = ['CKAAccumulator', 'KERNELS', 'OBJECTIVES', 'PairedGroups', 'auto_n_groups', 'boundary_stability', 'cka',
           'cka_from_grams', 'cka_matrix', 'contiguous_groups', 'draw_matrix', 'even_split', 'group_boundaries',
           'group_colour', 'grouped_normalized_grams', 'grouping_objective', 'groups_from_sizes', 'groups_to_json', 'hsic_terms',
           'matrices_figure', 'min_cka_samples', 'normalized_grams', 'pair_groups', 'proportional_split',
           'random_split', 'runs_figure', 'save_png', 'silhouette', 'student_teacher_figure', 'teacher_caption',
           'teacher_figure', 'validate_groups', 'width_groups']
