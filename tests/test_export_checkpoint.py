"""export_checkpoint as a script: a checkpoint it cannot export ends in one line, not a traceback."""

from __future__ import annotations

import pytest
import torch

from ksrnet.export_checkpoint import main


@pytest.mark.parametrize("state", [
    {"hyper_parameters": {"config": {"stage": "1", "model": {}}}, "state_dict": {}},  # KSR-Net training's
    {"state_dict": {}},  # no hyper-parameters
    {"hyper_parameters": {"config": {"model": {"embed_dim": 32, "enc_heads": 2, "dec_heads": 2}}},
     "state_dict": {"model.unrelated": torch.zeros(1)}},  # weights that are not this model's
])
def test_a_checkpoint_it_cannot_export_is_one_clear_line(tmp_path, state):
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "out.safetensors"
    torch.save(state, ckpt)
    with pytest.raises(SystemExit) as exc:
        main([str(ckpt), str(out)])
    assert str(exc.value.code).startswith(f"error: cannot export {ckpt}") and not out.exists()


def test_a_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="cannot export"):
        main([str(tmp_path / "none.ckpt"), str(tmp_path / "out.safetensors")])


def test_a_recognizer_checkpoint_exports_to_loadable_weights(tmp_path):
    from ksrnet.models.parseq import Parseq
    from ksrnet.train_config import TrainConfig
    from ksrnet.weights import load_model

    config = TrainConfig.from_dict({"model": {"embed_dim": 32, "enc_heads": 2, "dec_heads": 2}})
    torch.manual_seed(0)
    model = Parseq(config.model)
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "out.safetensors"
    torch.save({"hyper_parameters": {"config": config.to_dict()}, "global_step": 3,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    main([str(ckpt), str(out)])
    loaded, meta = load_model(out)
    assert meta["global_step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
