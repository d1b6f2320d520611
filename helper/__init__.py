"""Training helpers; CKA math (cka), contiguous grouping (cka_groups), CKA figures (heatmap)."""
