"""Export PyTorch encoders and decoders to ONNX files with dynamic batch, height and width."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from vaeflow.models.onnx_vae import LAYOUT_KEY


def export(
    module: nn.Module,
    path: Path,
    in_channels: int,
    input_name: str,
    output_name: str,
    opset: int = 17,
    *,
    cast_float: bool = True,
) -> None:
    """Write ``module`` as an NCHW ONNX graph, the layout recorded in its metadata.

    The module runs in float32 unless ``cast_float`` is False (a module that computes in
    float16 inside, behind float32 inputs and outputs).
    """
    module = module.eval().float() if cast_float else module.eval()
    example = torch.zeros(1, in_channels, 64, 64)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch", 2: "height", 3: "width"}, output_name: {0: "batch", 2: "h", 3: "w"}},
            opset_version=opset,
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, {LAYOUT_KEY: "NCHW"})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
