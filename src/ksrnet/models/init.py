"""Weight initialisation shared by the transformer modules (ViT/BERT convention)."""

from torch import nn


def init_linear_and_norm(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear weights with zero biases, identity LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
