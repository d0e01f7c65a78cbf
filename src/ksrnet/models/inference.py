"""A faster copy of a trained network for reading only: batch norms folded, channels-last convolutions.

Reading with the shipped recognizer spends ~90 % of its time in the CNN stem. Folding each BatchNorm
into the convolution before it saves the norm's separate pass over every feature map, and
channels-last weights match the layout the preprocessed frames already have (so no convolution
converts its input). On this CPU the stem reads ~15-20 % faster, with outputs equal to float
rounding (benchmarks/RESULTS.md, "Folded batch norms"). The copy is for inference only: its batch
norms are gone, so it must never be trained or saved as the model's weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorms(module: nn.Module) -> int:
    """Fold, in place, every ``BatchNorm2d`` that directly follows a ``Conv2d`` inside an
    ``nn.Sequential`` into that convolution (its running statistics become the convolution's scale
    and bias; the norm becomes ``nn.Identity``). Needs ``module`` in eval mode. Returns how many
    were folded; a second call folds none."""
    if module.training:
        raise ValueError("fold batch norms only in eval mode: training uses batch statistics")
    folded = 0
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, norm = seq[i], seq[i + 1]
            # A grouped, dilated or transposed conv folds the same way; only a BN without running
            # statistics (track_running_stats=False) normalises by batch statistics even in eval.
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None:
                seq[i] = fuse_conv_bn_eval(conv, norm)
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


def inference_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode with its batch norms folded and its convolutions
    channels-last; ``module`` itself is left as it was. Idempotent."""
    fast = copy.deepcopy(module).eval()
    fold_batchnorms(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last)
