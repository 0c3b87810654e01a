"""MuScleLoRA: multi-scale low-rank adaptation with gradient alignment (training-stage)."""

from .defense import MuScleLoRA, ScaledLowRankLinear, align_gradients, install_adapters, merge_adapters

__all__ = ['MuScleLoRA', 'ScaledLowRankLinear', 'align_gradients', 'install_adapters', 'merge_adapters']
