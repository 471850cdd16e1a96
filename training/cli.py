"""``vaeflow train run / export``: vaeflow's own autoencoder, trained on CPU (needs the train extra).

Registered under the ``vaeflow.commands`` entry points (``pyproject.toml``); ``training.train``, and
torch with it, is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from vaeflow.cli.parsing import positive_int
from vaeflow.cli.tools import load


def register(commands: Any) -> None:
    train = commands.add_parser("train", help="train and export vaeflow's own models (needs torch)")
    sub = train.add_subparsers(dest="train_command", required=True, metavar="ACTION")
    p = sub.add_parser("run", help="train until --steps or --minutes; run again to resume")
    p.add_argument("--data", required=True, action="append",
                   help="folder of training photos, repeatable (never the evaluation set)")  # fmt: skip
    p.add_argument("--workdir", required=True, help="checkpoint and log folder")
    p.add_argument("--model", choices=("f8c4", "f8c12"), default="f8c4", help="architecture: f8c4 (v1) or f8c12 (v2)")
    p.add_argument("--batch", type=positive_int, default=16, help="crops per step")
    p.add_argument("--rate-lambda", type=float, default=0.0,
                   help="train for rate: loss = lambda x 255^2 x MSE + bpp (0: distortion only)")  # fmt: skip
    p.add_argument("--widen", default=None,
                   help="f8c12: start from these f8c4 weights (models/f8c4-v1/weights.pt), widened")  # fmt: skip
    p.add_argument("--step-low", type=float, default=0.5, help="finest quantization step trained for rate")
    p.add_argument("--step-high", type=float, default=3.0, help="coarsest quantization step trained for rate")
    p.add_argument("--rate-ramp", type=int, default=1000, help="steps over which the rate term ramps in")
    p.add_argument("--quantize", choices=("noise", "round"), default="noise",
                   help="what the decoder sees of a quantized latent: noise, or rounding")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=20000, help="total steps of the schedule")
    p.add_argument("--minutes", type=float, default=9.0, help="stop and checkpoint after this long")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--lr", type=float, default=4e-4, help="peak learning rate")
    p.add_argument("--init", default=None, help="start a new phase from these weights (e.g. models/f8c4-v1/weights.pt)")
    p.set_defaults(run=run_train)
    p = sub.add_parser("export", help="write ONNX files and register them as the shipped default")
    p.add_argument("--workdir", required=True, help="the training run's checkpoint folder")
    p.add_argument("--data", required=True, action="append", help="photos for the latent statistics, repeatable")
    p.add_argument("--out", default="models", help="the repository's models/ folder")
    p.add_argument("--name", required=True, help="the name to register the exported model under (e.g. f8c12-v2)")
    p.add_argument("--eval", default=None, help="evaluation images for the recorded reconstruction figures")
    p.set_defaults(run=run_export)


def _training() -> Any:
    return load("training.train", "train")


def run_train(args: argparse.Namespace) -> int:
    training = _training()
    cfg = training.TrainConfig(
        os.pathsep.join(args.data), args.workdir, model=args.model, steps=args.steps, minutes=args.minutes,
        batch=args.batch, threads=args.threads, seed=args.seed, lr=args.lr, init=args.init,
        rate_lambda=args.rate_lambda, widen=args.widen, step_low=args.step_low, step_high=args.step_high,
        quantize=args.quantize, rate_ramp=args.rate_ramp,
    )  # fmt: skip
    print(json.dumps(training.train(cfg)))
    return 0


def run_export(args: argparse.Namespace) -> int:
    registry = _training().export_model(args.workdir, os.pathsep.join(args.data), args.out, args.name, args.eval)
    print(f"registered in {registry}")
    return 0
