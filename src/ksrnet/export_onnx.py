"""Export the recognizer to ONNX and read with onnxruntime.

The exported graph is the traceable reading path: encoder, NAR decoding of the 7 fixed slots and a
fixed number of cloze refinement steps, returning the raw char and layout logits for a dynamic
batch of frames, and the frames' pooled encoder features (ksrnet.typicality). Syntax masks and fusion
stay in Python (ksrnet.infer), so both backends share them. The model's JSON (config, calibration
temperatures) is written beside the .onnx file.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ksrnet.models.parseq import Parseq, ParseqConfig, ParseqOutput, decode_constrained, layout_log_probs
from ksrnet.plates import Tokenizer, layout_masks
from ksrnet.atomic_files import atomic_write
from ksrnet.typicality import read_with_features

OPSET = 17
OUTPUTS = ("char_logits", "layout_logits")
FEATURES = "features"  # absent from exports made before the typicality check


class _NarReadout(torch.nn.Module):
    def __init__(self, model: Parseq, refine_iters: int):
        super().__init__()
        self.model, self.refine_iters = model, refine_iters

    def forward(self, images):
        out, features = read_with_features(self.model, images, "nar", self.refine_iters)
        return out.char_logits, out.layout_logits, features


def onnx_meta_path(onnx_path: Path) -> Path:
    return Path(str(onnx_path) + ".json")


def is_onnx_path(path) -> bool:
    """Whether a model argument names an ONNX export (".onnx" in any case, as file systems allow)."""
    return str(path).lower().endswith(".onnx")


def check_onnx_path(path: str | Path) -> None:
    """Refuse a file name without ".onnx": the ONNX backend reads only such names, and the metadata
    of "DIR/model" would be "DIR/model.json", the metadata file of DIR/model.safetensors."""
    if not is_onnx_path(path):
        raise ValueError(f"{path}: give the ONNX file a name ending in .onnx (its metadata goes to FILE.onnx.json)")


def export_onnx(model: Parseq, path: str | Path, meta: dict | None = None, refine_iters: int | None = None) -> Path:
    """Write path (.onnx) and path.json (the model's metadata plus the exported refine_iters)."""
    check_onnx_path(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iters = model.config.refine_iters if refine_iters is None else refine_iters
    # The wrapper must be in eval mode itself: the exporter follows the top module's flag, and
    # BatchNorm exported in training mode uses batch statistics.
    wrapper = _NarReadout(model, iters).eval()
    c = model.config
    dummy = torch.zeros(2, c.in_chans, c.img_h, c.img_w)

    def write(target: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(wrapper, (dummy,), target, input_names=["images"],
                              output_names=[*OUTPUTS, FEATURES], opset_version=OPSET, dynamo=False,
                              dynamic_axes={name: {0: "batch"} for name in ("images", *OUTPUTS, FEATURES)})

    atomic_write(path, write)
    from ksrnet.ensemble_calibration import file_sha256

    # The graph and its metadata are two files, replaced one after the other: the digest lets a reader
    # refuse a pair that a crash (or a copy) between the two left mismatched.
    info = dict(meta or {}) | {"config": c.to_dict(), "kind": "parseq-onnx", "refine_iters": iters,
                               "onnx_sha256": file_sha256(path)}
    atomic_write(onnx_meta_path(path), lambda p: Path(p).write_text(json.dumps(info, indent=2)))
    return path


class OnnxParseq:
    """An onnxruntime session that a Reader can use in place of a Parseq (NAR, fixed refinement)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        try:
            self.meta = json.loads(onnx_meta_path(path).read_text())
            self.config = ParseqConfig.from_dict(self.meta["config"])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot read {onnx_meta_path(path)} (written by `ksrnet export`): {exc}") from exc
        expected = self.meta.get("onnx_sha256")  # absent from exports made before it was recorded
        if expected is not None:
            from ksrnet.ensemble_calibration import file_sha256

            if file_sha256(path) != expected:
                raise ValueError(f"{onnx_meta_path(path)} was written for another {path.name} (sha256 differs): "
                                 "export again with `ksrnet export --onnx`")
        self.refine_iters = self.meta.get("refine_iters", self.config.refine_iters)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.has_features = FEATURES in {o.name for o in self.session.get_outputs()}

    def to(self, device):
        if torch.device(device).type != "cpu":
            raise ValueError("the ONNX backend runs on the CPU here (onnxruntime CPU provider)")
        return self

    def eval(self):
        return self

    def __call__(self, images: torch.Tensor, *, mode: str = "nar", refine_iters: int | None = None) -> ParseqOutput:
        chars, layouts = self._run(OUTPUTS, images, mode, refine_iters)
        return ParseqOutput(chars, layouts)

    def read_with_features(self, images: torch.Tensor, *, mode: str = "nar",
                           refine_iters: int | None = None) -> tuple[ParseqOutput, torch.Tensor]:
        """The outputs and the frames' pooled encoder features (ksrnet.typicality.read_with_features)."""
        if not self.has_features:
            raise ValueError("this ONNX export has no features output: export it again with `ksrnet export --onnx`")
        chars, layouts, features = self._run((*OUTPUTS, FEATURES), images, mode, refine_iters)
        return ParseqOutput(chars, layouts), features

    def _run(self, names: tuple[str, ...], images: torch.Tensor, mode: str, refine_iters: int | None) -> list:
        if mode != "nar" or refine_iters not in (None, self.refine_iters):
            raise ValueError(f"the ONNX model was exported for NAR decoding with {self.refine_iters} refinement "
                             "step(s) only")
        outs = self.session.run(list(names), {"images": images.detach().cpu().numpy().astype(np.float32)})
        return [torch.from_numpy(o) for o in outs]


@dataclass(frozen=True)
class Parity:
    max_abs_char_logits: float
    max_abs_layout_logits: float
    frames: int
    readings_differ: int
    max_abs_features: float | None = None  # None: the export has no features output


def _readings(char_logits: torch.Tensor, layout_logits: torch.Tensor) -> list[str]:
    masks = torch.from_numpy(layout_masks())
    indices = decode_constrained(*layout_log_probs(char_logits.float(), layout_logits.float(), masks))[0]
    return [Tokenizer().decode(row) for row in indices.tolist()]


@torch.inference_mode()
def check_parity(model: Parseq, onnx_model: OnnxParseq, images: torch.Tensor) -> Parity:
    """Largest logit differences and how many per-frame readings differ between the two backends."""
    ref, ref_features = read_with_features(model, images, "nar", onnx_model.refine_iters)
    if onnx_model.has_features:
        got, got_features = onnx_model.read_with_features(images)
        features = float((ref_features - got_features).abs().max())
    else:
        got, features = onnx_model(images), None
    return Parity(
        max_abs_char_logits=float((ref.char_logits - got.char_logits).abs().max()),
        max_abs_layout_logits=float((ref.layout_logits - got.layout_logits).abs().max()),
        frames=images.shape[0],
        readings_differ=sum(a != b for a, b in zip(_readings(*ref), _readings(*got))),
        max_abs_features=features,
    )
