"""Export trained weights to ONNX for deployment (chaiNNer, onnxruntime, TensorRT), or to the
`.pth` chaiNNer and traiNNer-redux read.

    python -m zerosr.export WEIGHTS.safetensors OUT.onnx [--opset 17] [--fp16]
    python -m zerosr.export WEIGHTS.safetensors OUT.pth  [--fp16]

A `.pth` holds the plain state dict under `params_ema`, as traiNNer-redux writes its own; spandrel
(chaiNNer's loader) unwraps that key. Only families spandrel knows are written this way (SPAN,
Compact, PLKSR, ESRGAN); a zerosr `.safetensors` of those families opens in chaiNNer as it is.

The graph takes `input` (N, 3, H, W) and returns `output` (N, 3, scale*H, scale*W); batch, height
and width are dynamic. The window attention is traced in a form that computes its window grid
from the input size inside the graph, so one file serves every image size. Large inputs need
memory for all attention windows at once; tile very large images.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from zerosr.archs import load
from zerosr.archs.io import strip_prefixes
from zerosr.archs.spec import family_of, onnx_min_opset
from zerosr.atomic import atomic_write_bytes
from zerosr.errors import UserError

DEFAULT_OPSET = 17


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET, fp16: bool = False) -> Path:
    """Write `model` as an ONNX graph with dynamic batch, height and width; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory: give a file name such as {path / 'model.onnx'}")
    oldest = onnx_min_opset(model)
    if oldest is None:
        raise UserError(f"{getattr(model, 'arch_family', type(model).__name__)} networks do not export to ONNX: "
                        "use the .safetensors weights with python -m zerosr.upscale")
    if opset < oldest:
        raise UserError(f"opset {opset} is too old for this network: use {oldest} or newer (default {DEFAULT_OPSET})")
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    model = model.to("cpu", dtype).eval()
    # 40x36 puts both axes on the windowed path; the traced graph does not depend on it.
    example = torch.rand(1, 3, 40, 36, dtype=dtype)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter, not actionable here
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": dynamic, "output": dynamic},
                opset_version=opset,
                do_constant_folding=True,
            )
    except (RuntimeError, ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise UserError(f"ONNX export failed at opset {opset} ({message}): try the default opset {DEFAULT_OPSET}") from None
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose a writable location") from None
    return path


def export_pth(model: nn.Module, path: str | Path, fp16: bool = False) -> Path:
    """Write the network's plain state dict, wrapped as `{"params_ema": state}`, atomically."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory: give a file name such as {path / 'model.pth'}")
    owner = family_of(model)
    if owner is None or not owner.spandrel:
        name = getattr(model, "arch_family", None) or type(model).__name__
        raise UserError(f"chaiNNer cannot read {name} weights as .pth (its loader, spandrel, does not know the "
                        "network): export to .onnx instead")
    dtype = torch.float16 if fp16 else torch.float32
    state = {key: value.detach().to("cpu", dtype).contiguous() for key, value in strip_prefixes(model.state_dict()).items()}
    buffer = io.BytesIO()
    torch.save({"params_ema": state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zerosr.export",
        description="Export trained weights (.safetensors from zerosr, or another trainer's .pth) to ONNX.",
    )
    parser.add_argument("weights", help="weights file: .safetensors written by zerosr, or a traiNNer / neosr .pth")
    parser.add_argument("output", help="file to write: model.onnx, or model.pth (SPAN, Compact, PLKSR, ESRGAN)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--fp16", action="store_true", help="half-precision weights, input and output")
    parser.add_argument("--name", help="arch option, only needed for files that cannot be recognised")
    parser.add_argument("--scale", type=int, help="scale, only needed for files that cannot be recognised")
    args = parser.parse_args(argv)
    try:
        model = load(args.weights, name=args.name, scale=args.scale)
        if Path(args.output).suffix.lower() == ".pth":
            out = export_pth(model, args.output, fp16=args.fp16)
        else:
            out = export_onnx(model, args.output, opset=args.opset, fp16=args.fp16)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    precision = "fp16" if args.fp16 else "fp32"
    if out.suffix.lower() == ".pth":
        print(f"wrote {out} ({model.arch_name} x{model.scale}, {precision}, state dict under params_ema)")
        return 0
    print(f"wrote {out} ({model.arch_name} x{model.scale}, {precision}, opset {args.opset}, dynamic N/H/W)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
