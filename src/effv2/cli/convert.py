"""`effv2 convert --from torchvision|timm SRC --model NAME --out DST.safetensors`.

Reads torchvision or timm EfficientNetV2 weights (pickle files only through
``torch.load(weights_only=True)``), converts them into the matching effv2 model, checks that both
give the same logits on a seeded random batch, and writes a .safetensors file that records the
model card, so ``effv2 eval`` / ``predict`` and ``load_for_inference`` rebuild the model from it alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..io.torch_load import safe_torch_load
from ..io.weights import save_weights
from ..models.convert import SOURCES, convert, load_source_model, max_logit_diff, resolve_source
from ..models.flops import count_params


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="import torchvision / timm EfficientNetV2 weights into an effv2 .safetensors")
    p.add_argument(
        "src", metavar="SRC", help="weights file: .pth / .pt / .bin (loaded with weights_only=True) or .safetensors"
    )
    p.add_argument("--from", dest="source", required=True, choices=SOURCES, help="library the weights come from")
    p.add_argument(
        "--model",
        dest="src_name",
        required=True,
        metavar="NAME",
        help="source architecture, e.g. efficientnet_v2_s (torchvision) or tf_efficientnetv2_b0 (timm)",
    )
    p.add_argument("--out", required=True, metavar="DST", help="output .safetensors file")
    p.add_argument(
        "--ema",
        action="store_true",
        help="take the EMA weights of a training checkpoint (state_dict_ema / model_ema / ema)",
    )
    p.add_argument(
        "--check-size",
        type=int,
        default=128,
        metavar="PX",
        help="image size of the parity check on a random batch of 2 (default 128; 0 skips it)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="refuse to write when the max |logit difference| exceeds this (default 1e-4)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: expected a .safetensors file name")
    if args.check_size < 0:
        raise UsageError(f"--check-size: expected a size in pixels >= 0, got {args.check_size}")
    arch = resolve_source(args.source, args.src_name)  # fail on the name before reading a large file
    state = safe_torch_load(args.src, ema=args.ema)
    src_model = load_source_model(args.source, args.src_name, state).float()
    model = convert(args.source, src_model, src_name=args.src_name)
    check = "parity not checked"
    diff = None
    if args.check_size:
        diff = max_logit_diff(src_model, model, image_size=args.check_size)
        check = f"max |logit diff| {diff:.2e} at {args.check_size} px"
        if not diff <= args.tolerance:
            raise UsageError(
                f"{args.src}: converted model disagrees with the {args.source} model "
                f"({check}, tolerance {args.tolerance:g}); nothing written"
            )
    save_weights(
        model,
        out,
        metadata={
            "converted_from": {
                "source": args.source,
                "name": args.src_name,
                "file": Path(args.src).name,
                "max_abs_logit_diff": diff,
                "check_size": args.check_size or None,
            }
        },
    )
    spec = model.spec
    print(
        f"converted {args.source} {args.src_name} -> {arch.model} ({count_params(model):,} parameters, "
        f"{model.num_classes} classes, {model.in_chans} input channels, padding {spec.padding}, "
        f"bn_eps {spec.bn_eps:g}): {check} -> {out}"
    )
    return 0
