"""Export a Lightning training checkpoint (last.ckpt) to shipped-model form: safetensors + JSON config.

Usage: python -m ksrnet.export_checkpoint RUN/checkpoints/last.ckpt OUT.safetensors
"""

from __future__ import annotations

import pickle
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


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit(__doc__)
    try:
        export_checkpoint(Path(argv[0]), Path(argv[1]))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        # A missing or corrupt file, or a checkpoint of another kind (KSR-Net training writes its own
        # weights): one line, not a traceback.
        sys.exit(f"error: cannot export {argv[0]}, which must be a recognizer training checkpoint "
                 f"(`ksrnet train`): {exc!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
