"""What a running process offers every layer: the user-error type and the collectives.

Imports nothing of the project, so that `crd/` and `distiller_zoo/` may use it.
"""
