"""effv2 against the same architecture in timm and torchvision, timed in one process.

What "the same architecture" is (each library's default model for it, never an invented one):

=============  ===========================  ==================  =====================================
effv2          timm                         torchvision         note
=============  ===========================  ==================  =====================================
b0, b1, b2, b3 ``tf_efficientnetv2_b*``     none                timm has only the TF port: TF 'same'
                                                                padding, BN eps 1e-3
s, m, l, xl    ``efficientnetv2_*``         ``efficientnet_v2_*``  timm: symmetric padding, BN eps 1e-5;
                                            (s, m, l)           torchvision: symmetric, eps 1e-3
=============  ===========================  ==================  =====================================

So by default b0 is compared as effv2 (symmetric padding) against timm's TF-padded model; pass
``padding="tf_same"`` to time effv2 with the same padding (apples to apples).

Every reference gets effv2's weights through :func:`effv2.models.convert.transfer_weights`, and
before any timing the logits are checked: an effv2 twin built with the reference's padding and BN
eps must give the reference's logits (fp32, eval) within 1e-4 relative. A mismatch raises: timing
two different networks would be meaningless.

Timing interleaves the variants step by step (A, B, C, A, B, C, ...) so that load from other
processes, thermal state and turbo hit all of them alike; the median of each is reported.

:func:`run_bench` is the whole `effv2 bench` run (effv2 alone is a comparison of one variant).
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..models import create_model, get_card
from ..runtime.compile_cache import use_persistent_compile_cache
from ..runtime.malloc import keep_freed_memory
from ..runtime.replicas import resolve_replicas
from .timing import Step, check_sizes, resolve_device, run_timed, summarize

LIBRARIES: tuple[str, ...] = ("timm", "torchvision")


@dataclass(frozen=True)
class Reference:
    """A library's model for one effv2 architecture."""

    library: str
    name: str  # the library's own model name
    padding: str  # "tf_same" or "symmetric"
    bn_eps: float


def reference_for(library: str, model: str) -> Reference | None:
    """The library's default model for effv2 ``model``, or None when it has none."""
    if library not in LIBRARIES:
        raise UsageError(f"--compare: {library!r} is not one of {', '.join(LIBRARIES)}")
    variant = model.removeprefix("efficientnetv2_") if model.startswith("efficientnetv2_") else None
    if library == "timm":
        if variant in ("b0", "b1", "b2", "b3"):
            return Reference("timm", f"tf_efficientnetv2_{variant}", "tf_same", 1e-3)
        if variant in ("s", "m", "l", "xl"):
            return Reference("timm", f"efficientnetv2_{variant}", "symmetric", 1e-5)
        return None
    if variant in ("s", "m", "l"):
        return Reference("torchvision", f"efficientnet_v2_{variant}", "symmetric", 1e-3)
    return None


def library_available(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def build_reference(
    ref: Reference, *, num_classes: int, in_chans: int, drop_rate: float, drop_path_rate: float
) -> nn.Module:
    """The reference model with the same classifier width and regularisation as the effv2 model."""
    if not library_available(ref.library):
        raise UsageError(f"--compare {ref.library}: the package is not installed (pip install {ref.library})")
    if ref.library == "timm":
        import timm

        return timm.create_model(
            ref.name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
    import torchvision

    if in_chans != 3:
        raise UsageError(f"--compare torchvision: {ref.name} takes 3 input channels, not {in_chans}")
    return getattr(torchvision.models, ref.name)(
        weights=None, num_classes=num_classes, dropout=drop_rate, stochastic_depth_prob=drop_path_rate
    )


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    try:
        from ..models.convert import transfer_weights
    except ModuleNotFoundError as exc:  # pragma: no cover - only while convert.py is being written
        raise UsageError(f"--compare needs effv2.models.convert.transfer_weights ({exc})") from None
    transfer_weights(src, dst)


@torch.no_grad()
def check_same_logits(
    model_name: str,
    effv2_model: nn.Module,
    ref: Reference,
    ref_model: nn.Module,
    *,
    image_size: int,
    in_chans: int,
    num_classes: int,
    rtol: float = 1e-4,
) -> dict[str, Any]:
    """Build an effv2 twin with the reference's padding and BN eps, load ``effv2_model``'s weights,
    and compare its logits with ``ref_model``'s on a seeded batch (fp32, eval). Raises on mismatch."""
    twin = create_model(model_name, num_classes=num_classes, in_chans=in_chans, padding=ref.padding, bn_eps=ref.bn_eps)
    twin.load_state_dict(effv2_model.state_dict())
    twin.eval()
    was_training = ref_model.training
    ref_model.eval()
    x = torch.randn(2, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(0))
    a, b = twin(x), ref_model(x)
    ref_model.train(was_training)
    checked = f"effv2 {model_name} (padding={ref.padding}, bn_eps={ref.bn_eps:g}) vs {ref.library} {ref.name}"
    if a.shape != b.shape:
        raise RuntimeError(f"compare: logits shapes differ ({checked}): {tuple(a.shape)} vs {tuple(b.shape)}")
    diff, scale = float((a - b).abs().max()), float(a.abs().max())
    if diff > rtol * scale + 1e-7:
        raise RuntimeError(
            f"compare: logits differ after weight transfer ({checked}): max |diff| {diff:.3g}, "
            f"max |logit| {scale:.3g}; the architectures are not the same"
        )
    return {"checked": checked, "max_abs_diff": diff, "max_abs_logit": scale}


def interleave(steps: dict[str, Step], *, batch_size: int, n_steps: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Warm every variant up, then time them in rounds (one step each per round, in order); the
    median of each variant's step times is reported (keys as :func:`effv2.bench.timing.measure`)."""
    check_sizes(batch_size, 1, 1, n_steps, warmup)
    warm = {name: [run_timed(step) for _ in range(warmup)] for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n_steps):
        for name, step in steps.items():
            times[name].append(run_timed(step))
    return {name: summarize(times[name], batch_size, warm[name]) for name in steps}


def clone_for_variant(model: nn.Module) -> nn.Module:
    """An independent copy (timing converts and trains models in place)."""
    return copy.deepcopy(model)


def references(model: str, libraries: list[str]) -> tuple[list[Reference], list[str]]:
    """The references to build for ``libraries`` and notes on the ones that do not exist."""
    get_card(model)  # unknown model -> SpecError before anything else
    refs, notes = [], []
    for lib in libraries:
        ref = reference_for(lib, model)
        if ref is None:
            notes.append(f"{lib} has no model for {model}; skipped")
        elif not library_available(lib):
            notes.append(f"{lib} is not installed; skipped")
        else:
            refs.append(ref)
    return refs, notes


# --------------------------------------------------------------------------------------------------
# The bench run: effv2 alone, or effv2 against the references, in one process.

MODES: tuple[str, ...] = ("train", "infer")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One `effv2 bench` run. ``None`` settings are filled from :func:`effv2.bench.machine.fast_defaults`."""

    model: str
    image_size: int
    batch_size: int
    mode: str = "train"  # "train": forward + loss + backward + optimizer step; "infer": forward only
    steps: int = 10  # timed steps per variant (median reported)
    warmup: int = 3  # untimed steps per variant first; the first one includes compilation
    amp: str = "auto"  # none / bf16 / fp16 / auto (= fast default for the device)
    channels_last: bool | None = None
    compile: bool | None = None
    fold_bn: bool | None = None  # inference only: fold BN into the convs (effv2.models.fuse)
    replicas: int | None = None  # train only: a shard of the batch per core (runtime/replicas.py); None = auto
    padding: str | None = None  # effv2 padding override: "symmetric" / "tf_same"; None = the model's own
    compare: tuple[str, ...] = ()  # libraries: "timm", "torchvision"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    in_chans: int | None = None  # None = the model card's (len(card.mean))
    num_classes: int = 1000
    optimizer: str = "sgd"
    seed: int = 0

    def __post_init__(self) -> None:
        get_card(self.model)
        if self.mode not in MODES:
            raise UsageError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        check_sizes(self.batch_size, self.image_size, self.in_chans or 1, self.steps, self.warmup)
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            raise UsageError(f"amp: {self.amp!r} is not one of auto, none, bf16, fp16")
        if self.padding not in (None, "symmetric", "tf_same"):
            raise UsageError(f"padding: {self.padding!r} is not one of symmetric, tf_same")
        if self.mode == "train" and self.fold_bn:
            raise UsageError("--fold-bn applies to --mode infer only (a folded model has no BN to train)")
        for lib in self.compare:
            if lib not in LIBRARIES:
                raise UsageError(f"--compare: {lib!r} is not one of {', '.join(LIBRARIES)}")
        if self.num_classes < 1:
            raise UsageError(f"num_classes: expected >= 1, got {self.num_classes}")
        if self.replicas is not None and self.replicas < 1:
            raise UsageError(f"--replicas: expected >= 1, got {self.replicas}")
        if self.mode == "infer" and (self.replicas or 1) > 1:
            raise UsageError("--replicas applies to --mode train only (inference runs one batch on every thread)")


@dataclass(frozen=True)
class Settings:
    """Execution settings of one timed variant."""

    amp: str
    channels_last: bool
    compile: bool
    fold_bn: bool
    replicas: int = 1

    def describe(self) -> str:
        on = [f"amp={self.amp}"] + [k for k in ("channels_last", "compile", "fold_bn") if getattr(self, k)]
        on += [f"replicas={self.replicas}"] if self.replicas > 1 else []
        return ", ".join(on) if on != ["amp=none"] else "fp32 eager NCHW"


PLAIN = Settings(amp="none", channels_last=False, compile=False, fold_bn=False, replicas=1)


def resolve_settings(cfg: BenchConfig, device: torch.device) -> tuple[Settings, dict[str, str]]:
    """effv2's settings for this run and, for each, whether it came from a flag or the fast default."""
    from .machine import fast_defaults

    fast = fast_defaults(device, batch_size=cfg.batch_size)
    chosen = {
        "amp": None if cfg.amp == "auto" else cfg.amp,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "fold_bn": cfg.fold_bn,
        "replicas": cfg.replicas,
    }
    source = {k: ("flag" if v is not None else f"fast_defaults({device.type})") for k, v in chosen.items()}
    fast_fold = fast["fold_bn_infer"] and cfg.mode == "infer"
    amp = chosen["amp"] if chosen["amp"] is not None else fast["amp"]
    compile = fast["compile"] if cfg.compile is None else cfg.compile
    replicas = 1
    if cfg.mode == "train":
        replicas, why = resolve_replicas(
            "auto" if cfg.replicas is None else cfg.replicas,
            device=device,
            amp=amp,
            batch_size=cfg.batch_size,
            compile=compile,
            world_size=1,
        )
        source["replicas"] = "flag" if cfg.replicas is not None else f"auto: {why}"
    settings = Settings(
        amp=amp,
        channels_last=fast["channels_last"] if cfg.channels_last is None else cfg.channels_last,
        compile=compile,
        fold_bn=fast_fold if cfg.fold_bn is None else cfg.fold_bn,
        replicas=replicas,
    )
    if cfg.mode == "train":
        source["fold_bn"] = "n/a in train mode"
    else:
        source["replicas"] = "n/a in infer mode"
    return settings, source


def make_step(model: nn.Module, s: Settings, cfg: BenchConfig, in_chans: int, dev: torch.device) -> Step:
    """Apply ``s`` to ``model`` (fold BN, device, channels-last, compile, in that order) and return its
    train or infer step for ``cfg``. The model is changed in place."""
    from ..models.fuse import fold_bn
    from .timing import build_infer_step, build_train_step

    if cfg.mode == "infer" and s.fold_bn:
        model = fold_bn(model, inplace=True)
    common = dict(
        batch_size=cfg.batch_size,
        image_size=cfg.image_size,
        in_chans=in_chans,
        amp=s.amp,
        channels_last=s.channels_last,
        device=dev,
    )
    if cfg.mode == "train":  # the trainer's own step; its runtime compiles the forward when asked
        return build_train_step(
            model,
            num_classes=cfg.num_classes,
            optimizer=cfg.optimizer,
            compile=s.compile,
            replicas=s.replicas,
            **common,
        )
    model.to(dev)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    if s.compile:
        use_persistent_compile_cache()
        model = torch.compile(model)
    return build_infer_step(model, **common)


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Time effv2 (and the references in ``cfg.compare``) and return the JSON-ready report."""
    from ..models.flops import count_macs
    from .machine import describe, fast_defaults_reasons, peak_flops

    dev = resolve_device(cfg.device)
    if dev.type == "cpu":
        keep_freed_memory()  # as a training run has it; for every variant alike (one process)
    card = get_card(cfg.model)
    in_chans = cfg.in_chans or len(card.mean)
    settings, source = resolve_settings(cfg, dev)
    if settings.compile and cfg.warmup < 1:
        raise UsageError("--compile needs --warmup >= 1 (the first step compiles; it must not be timed)")
    overrides = {"padding": cfg.padding} if cfg.padding else {}
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=cfg.num_classes, in_chans=in_chans, **overrides)
    macs = count_macs(model, cfg.image_size, in_chans)  # per image, one forward
    # A training step costs ~3x the forward FLOPs: backward computes grads w.r.t. inputs and weights.
    flop_per_img = 2 * macs * (3 if cfg.mode == "train" else 1)

    refs, notes = references(cfg.model, list(cfg.compare))
    if cfg.compare and not refs:
        raise UsageError("--compare: nothing to compare with (" + "; ".join(notes) + ")")
    variants: list[tuple[str, str, str, nn.Module, Settings]] = []  # (key, library, model name, model, settings)
    checks: dict[str, Any] = {}
    for ref in refs:
        ref_model = build_reference(
            ref, num_classes=cfg.num_classes, in_chans=in_chans, drop_rate=card.dropout, drop_path_rate=card.drop_path
        )
        copy_weights(model, ref_model)
        # Parity does not depend on the size; cap it so the fp32 CPU check stays fast for XL at 512 px.
        checks[ref.library] = check_same_logits(
            cfg.model,
            model,
            ref,
            ref_model,
            image_size=min(cfg.image_size, 128),
            in_chans=in_chans,
            num_classes=cfg.num_classes,
        )
        variants.append((f"{ref.library} defaults", ref.library, ref.name, ref_model, PLAIN))
        if settings != PLAIN:
            variants.append(
                (f"{ref.library} same flags", ref.library, ref.name, clone_for_variant(ref_model), settings)
            )
        else:
            notes.append(f"effv2 runs {PLAIN.describe()}, so '{ref.library} same flags' = '{ref.library} defaults'")
    padding = cfg.padding or card.spec.padding
    variants.insert(0, ("effv2", "effv2", f"{cfg.model} (padding={padding})", model, settings))
    if settings.replicas > 1:  # what the replicas add, measured beside the rest (runtime/replicas.py)
        one = replace(settings, replicas=1)
        variants.insert(
            1, ("effv2 1 replica", "effv2", f"{cfg.model} (padding={padding})", clone_for_variant(model), one)
        )

    steps = {key: make_step(m, s, cfg, in_chans, dev) for key, _, _, m, s in variants}
    try:
        timed = interleave(steps, batch_size=cfg.batch_size, n_steps=cfg.steps, warmup=cfg.warmup)
    finally:
        for step in steps.values():
            getattr(step, "close", lambda: None)()  # a train step's replicas' threads

    results = []
    for key, lib, name, _, s in variants:
        t = timed[key]
        peak, how = peak_flops(dev, s.amp)
        achieved = flop_per_img * t["img_per_s"]
        first = t["warmup_s"][0] if t["warmup_s"] else None
        results.append(
            {
                "variant": key,
                "library": lib,
                "model": name,
                "settings": s.describe(),
                "step_s": t["step_s"],
                "img_per_s": t["img_per_s"],
                "flop_per_s": achieved,
                "peak_flop_per_s": peak,
                "peak_share": achieved / peak if peak else None,
                "peak_how": how,
                "first_step_s": first,
                "all_step_s": t["all_step_s"],
            }
        )
    base = results[0]["img_per_s"]
    ratios = {f"effv2 / {r['variant']}": base / r["img_per_s"] for r in results[1:]}
    return {
        "model": cfg.model,
        "mode": cfg.mode,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "in_chans": in_chans,
        "num_classes": cfg.num_classes,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "optimizer": cfg.optimizer if cfg.mode == "train" else None,
        "effv2_settings": {
            "amp": settings.amp,
            "channels_last": settings.channels_last,
            "compile": settings.compile,
            "fold_bn": settings.fold_bn,
            "replicas": settings.replicas,
            "padding": padding,
        },
        "settings_source": source,
        "macs_per_img": macs,
        "flop_per_img": flop_per_img,
        "flop_note": "FLOPs = 2 x MACs (torch.utils.flop_counter, convs and matmuls); "
        + ("train step = 3 x forward" if cfg.mode == "train" else "forward only"),
        "results": results,
        "ratios": ratios,
        "logit_check": checks,
        "notes": notes,
        "machine": describe(dev),
        "defaults_why": fast_defaults_reasons(dev, batch_size=cfg.batch_size),
        "gemm": _gemm_check(dev, {r["settings"]: r for r in results}),
    }


def _gemm_check(dev: torch.device, by_settings: dict[str, dict]) -> dict[str, Any]:
    """The derived peak against a measured large torch.mm in each precision the variants ran in."""
    from .machine import measured_gemm_flops, peak_flops

    if dev.type != "cpu":
        return {}
    out = {}
    for amp in sorted({("bf16" if "bf16" in k else "none") for k in by_settings}):
        precision = "bf16" if amp == "bf16" else "fp32"
        derived, _ = peak_flops(dev, amp)
        measured = measured_gemm_flops(precision)
        out[precision] = {"derived": derived, "measured_mm": measured, "share": measured / derived if derived else None}
    return out
