"""Export a Lightning training checkpoint (last.ckpt) to shipped-model form: safetensors + JSON config.

Usage: python -m ksrnet.export_checkpoint RUN/checkpoints/last.ckpt OUT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ksrnet.models.parseq import Parseq
from ksrnet.train_config import TrainConfig
from ksrnet.weights import save_model


def export_checkpoint(ckpt: Path, out: Path) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(state["hyper_parameters"]["config"])
    model = Parseq(config.model)
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in state["state_dict"].items() if k.startswith(prefix)})
    save_model(model, config.model, out, extra={"from_checkpoint": str(ckpt), "global_step": state.get("global_step")})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    export_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))
