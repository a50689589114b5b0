"""A trained model as one file that runs without cnnfeat: images in, probabilities out.

    from pipeline.config import ExportConfig
    from pipeline.export import export_model
    export_model(ExportConfig(workdir="runs/digits", model="best", output="digits.pt2"))

The file holds one module: uint8 RGB images (N, 3, H, W), any N, H and W, resized to each backbone's
size (features.resize_square, the resize extraction's device decoder uses and a close match of PIL's),
normalised, through every backbone the model reads and its head or blend at its temperature, to
(N, classes) float64 probabilities. The class names travel in the file (`cnnfeat.json`). It is made
with torch.export (torch's supported format; TorchScript is in maintenance) and loads with
`torch.export.load` alone; `--format onnx` makes an ONNX file of the same graph for onnxruntime.
"""

from __future__ import annotations

import io
import json
import logging

import torch
from torch import nn

from features import CnnfeatError, ConfigError, atomic_output, normalize, resize_square
from features import __version__ as cnnfeat_version

from .config import ExportConfig
from .heads.predict import features_logits, model_heads, model_proba
from .inference import Predictor, load_predictor

log = logging.getLogger(__name__)

META_FILE = "cnnfeat.json"  # the file's own description: torch.export's extra file, ONNX's metadata key
ONNX_OPSET = 18  # the first with Resize's antialias attribute


class ExportError(CnnfeatError, RuntimeError):
    """A model that torch.export (or the ONNX exporter) cannot take."""


class ImagesToProbabilities(nn.Module):
    """uint8 RGB images (N, 3, H, W) -> (N, classes) float64 probabilities: what predict --images computes,
    with no decoding (the caller hands it pictures, upright)."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor
        if predictor.network is not None:
            self.network = predictor.network.module
            self.register_buffer("mean", torch.tensor(predictor.network.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(predictor.network.std).view(1, 3, 1, 1), persistent=False)
        else:
            self.backbones = nn.ModuleList(predictor.featurizer.models.values())
            self.heads = nn.ModuleList(model_heads(predictor.model))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        network = self.predictor.network
        if network is not None:
            x = normalize(resize_square(images, network.image_size), self.mean, self.std)
            proba = self.network(x).double().softmax(1)
            return (proba + self.network(x.flip(-1)).double().softmax(1)) / 2 if self.predictor.tta else proba
        featurizer = self.predictor.featurizer
        features = featurizer.forward({size: resize_square(images, size) for size in featurizer.sizes})
        return model_proba(self.predictor.model, features_logits(features))


def export_model(cfg: ExportConfig) -> Path:
    """Write the model's file; ExportError naming what could not be exported."""
    predictor = load_predictor(cfg.workdir, cfg.model, device="cpu", precision="fp32")
    module = ImagesToProbabilities(predictor).eval().requires_grad_(False)  # probabilities out, no autograd graph
    example = torch.randint(0, 256, (2, 3, 97, 103), dtype=torch.uint8)  # sizes no backbone uses: nothing specialises
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536), 2: torch.export.Dim("height", min=2, max=16384),
               3: torch.export.Dim("width", min=2, max=16384)},)
    meta = json.dumps({"model": cfg.model, "classes": list(predictor.classes),
                       "input": "uint8 RGB images (N, 3, H, W), upright", "output": "(N, classes) float64 probabilities",
                       "cnnfeat_version": cnnfeat_version, "torch_version": str(torch.__version__)})
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if cfg.format == "onnx":
            _export_onnx(module, example, shapes, meta, cfg)
        else:
            program = _traced(module, example, shapes, cfg.model)
            buffer = io.BytesIO()
            torch.export.save(program, buffer, extra_files={META_FILE: meta})
            with atomic_output(cfg.output) as tmp:
                tmp.write_bytes(buffer.getvalue())
    return cfg.output


def _traced(module: ImagesToProbabilities, example: torch.Tensor, shapes: tuple, name: str) -> torch.export.ExportedProgram:
    try:
        return torch.export.export(module, (example,), dynamic_shapes=shapes)
    except Exception as err:  # noqa: BLE001 - torch.export raises many kinds; each means "cannot trace this"
        raise ExportError(f"model {name!r} cannot be exported: {_culprit(module)}torch.export failed "
                          f"({type(err).__name__}: {_first_lines(err)}); "
                          f"use `cnnfeat predict --images` with the workdir instead") from err


def _first_lines(err: Exception) -> str:
    """torch.export's messages run to pages; their first two lines say what failed."""
    return " ".join(line.strip() for line in str(err).splitlines()[:2])[:400]


def _culprit(module: ImagesToProbabilities) -> str:
    """'its backbone X does not trace; ' for the first backbone torch.export refuses alone, else ''."""
    featurizer = module.predictor.featurizer
    for job in featurizer.jobs if featurizer is not None else []:
        backbone = featurizer.models[job.target.model_key]
        try:
            torch.export.export(backbone, (torch.zeros(1, 3, job.target.size, job.target.size),))
        except Exception:  # noqa: BLE001 - as in _traced
            return f"its backbone {job.target.spec.name} does not trace; "
    return ""


def _export_onnx(module: ImagesToProbabilities, example: torch.Tensor, shapes: tuple, meta: str, cfg: ExportConfig) -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs onnx and onnxscript; onnxruntime runs the result
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"--format onnx needs the onnx extra ({err.name} is missing): "
                          f'pip install "cnnfeat[onnx]"') from err
    try:
        program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=ONNX_OPSET,
                                    input_names=["images"], output_names=["probabilities"], verbose=False)
    except Exception as err:  # noqa: BLE001 - as in _traced
        raise ExportError(f"model {cfg.model!r} cannot be exported to ONNX: {_culprit(module)}"
                          f"({type(err).__name__}: {_first_lines(err)}); "
                          f"try the default --format pt2") from err
    program.model.metadata_props[META_FILE] = meta
    with atomic_output(cfg.output) as tmp:
        program.save(str(tmp))
