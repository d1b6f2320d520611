"""Contrastive Representation Distillation building blocks (memory bank, NCE loss, embeddings)."""
from .criterion import CRDLoss, Embed, contrast_loss
from .memory import ContrastMemory

__all__ = ["CRDLoss", "ContrastMemory", "Embed", "contrast_loss"]
