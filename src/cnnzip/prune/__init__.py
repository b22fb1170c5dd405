"""Structured pruning: verified channel surgery, importance functions, network slimming.

    result = prune_channels(model, ChannelPruning(method="fpgm", ratio=0.3), torch.randn(1, 3, 32, 32))
    result.model      # a new, smaller model; its outputs equal the original's with those channels zeroed
"""

from .channels import ChannelPruning, PruneResult, apply_plan, plan_channels, prune_channels, prune_to_macs
from .graph import ChannelGraph, ChannelGroup, analyze, check_equivalent
from .importance import IMPORTANCE, bn_scale, fpgm, l1_norm, l2_norm, random_scores
from .latency import prune_to_latency
from .layers import register_layer
from .pca import PcaPruning, pca_plan, pca_prune
from .slimming import SparsityHook, bn_scales
from .step import PruneStep

__all__ = [
    "ChannelPruning", "PruneResult", "apply_plan", "plan_channels", "prune_channels", "prune_to_macs",
    "prune_to_latency", "ChannelGraph", "ChannelGroup", "analyze", "check_equivalent",
    "register_layer",
    "PcaPruning", "pca_plan", "pca_prune",
    "IMPORTANCE", "bn_scale", "fpgm", "l1_norm", "l2_norm", "random_scores",
    "SparsityHook", "bn_scales", "PruneStep",
]
