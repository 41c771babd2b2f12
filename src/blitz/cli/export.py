"""``blitz export``: a run's model as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's model as ONNX or TorchScript, checked")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", type=Path, metavar="FILE", help="default: RUN_DIR/model.<format>")


def main(args: argparse.Namespace) -> None:
    from blitz.outputs.export import default_path, description_path, export_model
    from blitz.training.rundir import RunDir

    ckpt = RunDir(args.run_dir).load_model()
    out = args.out or default_path(args.run_dir, args.format)
    facts = ckpt.model
    diff = export_model(facts, ckpt.build_model(), args.format, out)
    print(
        f"wrote {out}: input uint8 images (N, {facts.in_channels}, {facts.image_size}, "
        f"{facts.image_size}) in 0-255, output logits (N, {len(facts.classes)})"
        + (
            f", averaged over the run's test-time views ({facts.tta})"
            if facts.tta != "none"
            else ""
        )
        + (
            f", divided by its temperature {facts.temperature:.4g} (their softmax: calibrated "
            "probabilities)"
            if facts.temperature != 1.0
            else ""
        )
    )
    print(f"checked against PyTorch on random images: max abs difference {diff:.2e}")
    print(f"wrote {description_path(out)}: what a user of the file needs (classes, preprocessing)")
