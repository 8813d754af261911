"""`effv2 scale`: compound scaling to a parameter, MAC or latency target (with V2's caps), or LACS.

effv2 scale --spec efficientnetv2_b0 --target params 20M --out b0x.json
effv2 scale --spec runs/search/best_spec.json --target latency_ms 5 --method lacs --out fast.json
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError

SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def parse_value(text: str) -> float:
    """``20M`` -> 2e7, ``4.5G`` -> 4.5e9, ``5`` -> 5.0."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmgb]?)\s*", text.lower())
    if not m:
        raise UsageError(f"--target value {text!r}: expected a number, optionally with K, M or G (20M, 4.5G)")
    return float(m.group(1)) * SUFFIXES[m.group(2)]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "scale",
        help="compound-scale a model to a params / MACs / latency target (or LACS)",
        description="depth x alpha^phi, width x beta^phi, size x gamma^phi; phi solved by bisection on "
        "the real count or the measured latency; image size capped (V2), extra layers to "
        "the last stages instead.",
    )
    p.add_argument("--spec", required=True, help="registered model, spec/card JSON (e.g. a search's best_spec.json)")
    p.add_argument(
        "--target",
        nargs=2,
        required=True,
        metavar=("METRIC", "VALUE"),
        help="params | macs | latency_ms and a value: 20M, 4.5G, 12.5",
    )
    p.add_argument("--out", help="write the scaled model card JSON here (create_model / --model-spec accept it)")
    p.add_argument(
        "--method",
        default="compound",
        choices=("compound", "lacs"),
        help="compound (fixed coefficients, default) | lacs (search coefficients for a latency target)",
    )
    p.add_argument("--alpha", type=float, default=1.2, help="depth coefficient (default 1.2)")
    p.add_argument("--beta", type=float, default=1.1, help="width coefficient (default 1.1)")
    p.add_argument("--gamma", type=float, default=1.15, help="resolution coefficient (default 1.15)")
    p.add_argument("--max-size", type=int, default=480, help="cap on the eval image size (V2: 480)")
    p.add_argument(
        "--extra-stages",
        type=int,
        default=2,
        help="last stages that get extra layers when the size is capped (default 2)",
    )
    p.add_argument("--in-chans", type=int, help="input channels (default: from the card's mean, 1 or 3)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes, for the parameter count (default 1000)")
    g = p.add_argument_group("latency")
    g.add_argument(
        "--latency-mode",
        default="infer",
        choices=("infer", "train"),
        help="infer: one batch at the eval size (default) | train: one training step at the train size",
    )
    g.add_argument("--batch-size", type=int, default=1, help="latency batch size (default 1)")
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, help="torch CPU threads while timing")
    g.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "none", "bf16", "fp16"),
        help="autocast while timing (default auto: what effv2 trains with on this device)",
    )
    g.add_argument(
        "--channels-last",
        default="auto",
        choices=("auto", "on", "off"),
        help="memory format while timing (default auto: the trainer's)",
    )
    g = p.add_argument_group("LACS accuracy proxy")
    g.add_argument(
        "--accuracy-proxy",
        choices=("macs", "train"),
        help="train: proxy-train each candidate on --data (LACS proper; default when --data is given) | "
        "macs: log MACs, a compute-per-latency stand-in",
    )
    g.add_argument("--data", help="data source for --accuracy-proxy train")
    g.add_argument("--data-dir")
    g.add_argument("--proxy-epochs", type=int, default=3)
    g.add_argument("--train-subset", type=int)
    g.add_argument("--work-dir", help="where LACS proxy runs go (default: beside --out, or ./lacs_runs)")
    g.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import get_card
    from ..models.spec import SpecError
    from ..search.scale import TARGETS, Coefficients, ScaleLimits, lacs, latency_measure, macs_proxy, scale_to_target

    metric, raw = args.target
    if metric not in TARGETS:
        raise UsageError(f"--target {metric!r} is not one of {', '.join(TARGETS)}")
    value = parse_value(raw)
    try:
        card = get_card(args.spec)
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    in_chans = args.in_chans or (1 if len(card.mean) == 1 else 3)
    limits = ScaleLimits(max_size=args.max_size, extra_stages=args.extra_stages)
    coeffs = Coefficients(alpha=args.alpha, beta=args.beta, gamma=args.gamma)
    if args.threads:
        torch.set_num_threads(args.threads)
    measure = None
    if metric == "latency_ms" or args.method == "lacs":
        measure = latency_measure(
            mode=args.latency_mode,
            batch_size=args.batch_size,
            in_chans=in_chans,
            num_classes=args.num_classes,
            device=args.device,
            amp=args.amp,
            channels_last={"on": True, "off": False}.get(args.channels_last, "auto"),
        )
    log = None if args.json else print
    if args.method == "lacs":
        if metric != "latency_ms":
            raise UsageError("--method lacs scales to a latency target: --target latency_ms VALUE")
        proxy_kind = args.accuracy_proxy or ("train" if args.data else "macs")
        if proxy_kind == "train":
            proxy = _train_proxy(args, in_chans)
        else:
            proxy = macs_proxy(in_chans=in_chans, num_classes=args.num_classes)
            if log:
                log("accuracy proxy: log10 MACs (no --data); LACS proper uses trained accuracy: --data SOURCE")
        out = lacs(
            card,
            value,
            measure=measure,
            accuracy_proxy=proxy,
            limits=limits,
            in_chans=in_chans,
            num_classes=args.num_classes,
            log=log,
        )
        result = out.best
    else:
        result = scale_to_target(
            card,
            metric,
            value,
            coeffs=coeffs,
            limits=limits,
            in_chans=in_chans,
            num_classes=args.num_classes,
            measure=measure,
        )
    achieved = result.achieved
    if args.out:
        from ..io.atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(result.card.to_dict(), indent=2) + "\n")
    if args.json:
        print(
            json.dumps(
                {
                    "card": result.card.to_dict(),
                    "phi": result.phi,
                    "target": metric,
                    "value": value,
                    "achieved": achieved,
                    "error_pct": result.error_pct,
                    "coefficients": {
                        "alpha": result.coeffs.alpha,
                        "beta": result.coeffs.beta,
                        "gamma": result.coeffs.gamma,
                    },
                },
                indent=2,
            )
        )
        return 0
    c = result.card
    print(c.notes)
    print(c.spec.to_table())
    ex = getattr(measure, "execution", {})
    lat = (
        (
            f", latency {achieved['latency_ms']:.2f} ms ({args.latency_mode}, batch {args.batch_size}, {args.device}, "
            f"amp {ex.get('amp')}, channels_last {ex.get('channels_last')})"
        )
        if "latency_ms" in achieved
        else ""
    )
    print(
        f"target {metric} {value:g}: achieved {achieved[metric]:.4g} ({result.error_pct:+.2f}%) with phi "
        f"{result.phi:.4f} after {result.evaluations} evaluations"
    )
    print(
        f"params {achieved['params'] / 1e6:.3f}M, MACs {achieved['macs'] / 1e9:.3f}G at {c.eval_size} px{lat}; "
        f"train {c.train_size} px, eval {c.eval_size} px, width x{c.spec.width_mult:g}, depth x{c.spec.depth_mult:g}"
        f" ({args.num_classes} classes, {in_chans} input channels)"
    )
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _train_proxy(args: argparse.Namespace, in_chans: int):
    """LACS accuracy proxy: train each scaled candidate for a few epochs at its own train size."""
    from ..search.evaluators import ProxyEvaluator

    if not args.data:
        raise UsageError("--accuracy-proxy train needs --data SOURCE")
    work = Path(args.work_dir or (Path(args.out).with_suffix("") if args.out else Path("lacs_runs")))
    shared = ProxyEvaluator(
        data=args.data,
        backbone=args.spec,
        data_dir=args.data_dir,
        epochs=args.proxy_epochs,
        train_subset=args.train_subset,
        device=args.device,
    )
    counter = iter(range(1 << 30))

    def proxy(card) -> float:
        d = work / f"candidate{next(counter)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "spec.json").write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        ev = replace(shared, image_size=card.train_size)
        ev._bundle = shared.bundle()
        return float(ev(card.spec, d)["top1"])

    return proxy
