"""Save and load recognizer weights: safetensors plus the JSON config that built them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ksrnet.atomic_files import atomic_write
from ksrnet.models.parseq import Parseq, ParseqConfig

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_MODEL = "parseq-tiny"


class ModelLoadError(RuntimeError):
    pass


def config_path_for(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_weights(model: torch.nn.Module, config: dict, kind: str, path: str | Path,
                 extra: dict | None = None) -> Path:
    """Write path (safetensors) and path.json ({"config", "kind", **extra}), each atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"config": config, "kind": kind, **(extra or {})}
    atomic_write(path, lambda p: save_file(state, p))
    atomic_write(config_path_for(path), lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return path


def save_model(model: Parseq, config: ParseqConfig, path: str | Path, extra: dict | None = None) -> Path:
    """Recognizer weights: path (safetensors) and path.json (config + metadata)."""
    return save_weights(model, config.to_dict(), "parseq", path, extra)


def resolve(name_or_path: str | Path | None) -> Path:
    """A shipped model name (e.g. 'parseq-tiny'), a .safetensors file, or a run dir holding one."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "model.safetensors"
    elif not p.suffix and not p.exists():
        p = PACKAGE_WEIGHTS / f"{name_or_path}.safetensors"
    if not p.exists():
        shipped = sorted(x.stem for x in PACKAGE_WEIGHTS.glob("*.safetensors"))
        raise ModelLoadError(f"no model at {name_or_path} (looked for {p}); expected a run dir holding "
                             f"model.safetensors, a .safetensors file or a shipped name: {shipped or 'none'}")
    return p


def update_metadata(name_or_path: str | Path | None, fields) -> Path:
    """Merge fields into the JSON beside a model's weights (atomically); returns the JSON's path.
    ``fields``: a dict, or a function of the current metadata returning the dict (to merge into
    what is there without reading the file twice)."""
    meta_path = config_path_for(resolve(name_or_path))
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {meta_path}: {exc}") from exc
    meta.update(fields(meta) if callable(fields) else fields)
    atomic_write(meta_path, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return meta_path


def load_model(name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[Parseq, dict]:
    """The model in eval mode and its metadata (config, training figures)."""
    path = resolve(name_or_path)
    meta_path = config_path_for(path)
    try:
        meta = json.loads(meta_path.read_text())
        if isinstance(meta, dict) and meta.get("kind", "parseq") != "parseq":
            raise ModelLoadError(f"{path} holds {meta['kind']!r} weights, not a recognizer (PARSeq)")
        config = ParseqConfig.from_dict(meta["config"])
    except (OSError, KeyError, TypeError, ValueError) as exc:  # TypeError: "config" not a mapping
        raise ModelLoadError(f"cannot read the config beside {path} ({meta_path}): {exc}") from exc
    model = Parseq(config)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise ModelLoadError(f"{path} does not match its config: {exc}") from exc
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------------------------------
# KSR-Net (restoration + recognizer) weights, same format with kind "ksrnet"

KSRNET_WEIGHTS_NAME = "ksrnet.safetensors"


def save_ksrnet(model, config, path: str | Path, extra: dict | None = None) -> Path:
    """KSR-Net weights: path (safetensors) and path.json (KSRNetConfig.to_dict() + metadata)."""
    return save_weights(model, config.to_dict(), "ksrnet", path, extra)


def resolve_ksrnet(path: str | Path) -> Path:
    """A KSR-Net ``.safetensors`` file, or a run dir / stage dir holding ``ksrnet.safetensors``."""
    p = Path(path)
    if p.is_dir():
        p = p / KSRNET_WEIGHTS_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no KSR-Net weights at {path} (looked for {p})")
    return p


def load_ksrnet_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict and metadata of saved KSR-Net weights."""
    p = resolve_ksrnet(path)
    meta = json.loads(config_path_for(p).read_text())
    if meta.get("kind") != "ksrnet":
        raise ValueError(f"{p} holds {meta.get('kind')!r} weights, not KSR-Net")
    return load_file(str(p)), meta


def load_ksrnet(path: str | Path, device: str | torch.device = "cpu"):
    """The KSR-Net model (eval mode) and its metadata."""
    from ksrnet.models.ksrnet import KSRNet, KSRNetConfig

    state, meta = load_ksrnet_state(path)
    model = KSRNet(KSRNetConfig.from_dict(meta["config"]))
    model.load_state_dict(state)
    return model.to(device).eval(), meta
