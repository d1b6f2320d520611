"""CKA math: estimators and their accumulator, contiguous grouping, heatmap rendering.

Imports nothing of the project (torch, numpy and Pillow only).
"""
from cka.estimators import CKAAccumulator, KERNELS, cka, cka_from_grams, cka_matrix, hsic_terms, normalized_grams
from cka.grouping import (OBJECTIVES, PairedGroups, auto_n_groups, boundary_stability, contiguous_groups, even_split,
                          group_boundaries, grouping_objective, groups_from_sizes, groups_to_json,
                          pair_groups, proportional_split, silhouette, validate_groups)
from cka.heatmap import colormap, heatmap_image, heatmap_layout, save_heatmap_png

__all__ = ['CKAAccumulator', 'KERNELS', 'OBJECTIVES', 'PairedGroups', 'auto_n_groups', 'boundary_stability', 'cka',
           'cka_from_grams', 'cka_matrix', 'colormap', 'contiguous_groups', 'even_split', 'group_boundaries',
           'grouping_objective', 'groups_from_sizes', 'groups_to_json', 'heatmap_image', 'heatmap_layout',
           'hsic_terms', 'normalized_grams', 'pair_groups', 'proportional_split', 'save_heatmap_png', 'silhouette',
           'validate_groups']
