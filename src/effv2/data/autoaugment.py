"""AutoAugment as the official EfficientNetV2 code applies it to B0-B3, as batched uint8 tensor ops.

Source: google/automl efficientnetv2/ at commit 6a54c8741e7c3265d4547c4f35f47a0391122dc5
(``6a54c87`` below). The B0-B3 configs name ``'effnetv1_autoaug'`` (effnetv2_configs.py:203-210),
which runs the EfficientNetV1 preprocessing (preprocessing.py:133-139 -> preprocess_legacy.py:171-173)
and there ``autoaugment.distort_image_with_autoaugment(image, 'v0')``. What carries over:

- the policy: ``policy_v0`` (autoaugment.py:33-65), 25 sub-policies of two (op, probability, level)
  each, ported verbatim as :data:`POLICY_V0`: the EfficientNet (V1) training policy "v0". torchvision's
  ``AutoAugmentPolicy.IMAGENET`` is a different table (the AutoAugment paper's 25 ImageNet
  sub-policies, other ops, probabilities and magnitudes), so it is not substituted for this one;
- one sub-policy per image, uniformly (``select_and_apply_random_policy``, autoaugment.py:571-581);
- each op of it applied with its probability (``_apply_func_with_prob``, autoaugment.py:550-568:
  floor(u + prob) with u ~ U[0, 1), i.e. with probability ``prob``), in order;
- the levels: ``level_to_arg`` (autoaugment.py:504-524) with AutoAugment's constants
  ``cutout_const=100, translate_const=250`` (autoaugment.py:658), not RandAugment's 40/100; signs of
  rotate/shear/translate drawn per application (``_randomly_negate_tensor``, autoaugment.py:464-468);
- fill 128 for pixels moved in from outside (``replace_value``, autoaugment.py:600).

The ops themselves are the ones of :mod:`.randaugment` (the same official functions, with the same
one documented deviation in Contrast). Every random choice is drawn per image from one
``torch.Generator``; images are grouped by their (op, level) and each group runs once per slot.
"""

from __future__ import annotations

import torch

from . import randaugment as ra

# autoaugment.py:38-64 @6a54c87, (operation, probability, level) in file order
POLICY_V0: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

# hparams.Config(cutout_const=100, translate_const=250) in distort_image_with_autoaugment (autoaugment.py:658)
CUTOUT_CONST = 100
TRANSLATE_CONST = 250

Policy = tuple[tuple[tuple[str, float, int], ...], ...]


def level_to_arg(name: str, level: float) -> float | int | None:
    """The op's parameter at ``level`` (before the random sign) with AutoAugment's constants.

    Only Translate and Cutout differ from RandAugment's mapping (:func:`.randaugment.level_to_arg`).
    """
    if name in ("TranslateX", "TranslateY"):
        return (float(level) / ra.MAX_LEVEL) * float(TRANSLATE_CONST)
    if name == "Cutout":
        return int((float(level) / ra.MAX_LEVEL) * CUTOUT_CONST)
    return ra.level_to_arg(name, level)


_GEOMETRIC = {
    "Rotate": ra.rotate,
    "ShearX": ra.shear_x,
    "ShearY": ra.shear_y,
    "TranslateX": ra.translate_x,
    "TranslateY": ra.translate_y,
}


def apply_op(name: str, x: torch.Tensor, level: float, sign: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor):
    """One op at ``level`` on every image of uint8 (N, C, H, W); ``sign`` (N,) +-1, cutout centres (N,)."""
    v = level_to_arg(name, level)
    if name in _GEOMETRIC:
        return _GEOMETRIC[name](x, sign.to(torch.float64) * float(v))
    if name == "Cutout":
        return ra.cutout(x, int(v), cy, cx)
    return ra.apply_op(name, x, level)  # the level-only ops: same mapping as RandAugment


def autoaugment(x: torch.Tensor, gen: torch.Generator | None = None, policy: Policy = POLICY_V0) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, H, W): one sub-policy of ``policy`` per image, each op with its probability.

    ``gen`` None draws from torch's global generator (the per-sample file path runs in a seeded scope).
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"autoaugment needs uint8 images, got {x.dtype}")
    N, C, H, W = x.shape
    if N == 0 or not policy:
        return x
    slots = max(len(sub) for sub in policy)
    pick = torch.randint(len(policy), (N,), generator=gen)  # the sub-policy of each image
    u = torch.rand(slots, N, generator=gen)  # applied when u < prob (floor(u + prob) >= 1)
    sign = torch.where(torch.rand(slots, N, generator=gen) < 0.5, -1.0, 1.0)
    cy = torch.randint(H, (slots, N), generator=gen)
    cx = torch.randint(W, (slots, N), generator=gen)
    picks = pick.tolist()
    for s in range(slots):
        groups: dict[tuple[str, int], list[int]] = {}
        for i, k in enumerate(picks):
            if s < len(policy[k]):
                name, prob, level = policy[k][s]
                if float(u[s, i]) < prob:
                    groups.setdefault((name, level), []).append(i)
        if not groups:
            continue
        out = x.clone()
        for (name, level), rows in groups.items():
            idx = torch.tensor(rows, dtype=torch.int64)
            res = apply_op(name, x.index_select(0, idx.to(x.device)), level, sign[s, idx], cy[s, idx], cx[s, idx])
            out.index_copy_(0, idx.to(x.device), res)
        x = out
    return x


class OfficialAutoAugment:
    """Per-sample transform (uint8 (C, H, W) or (N, C, H, W)) for file pipelines; draws from the global RNG.

    Picklable (plain attributes), so it goes to spawned loader workers.
    """

    def __init__(self, policy: Policy = POLICY_V0) -> None:
        self.policy = policy

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.as_subclass(torch.Tensor)
        if x.ndim == 3:
            return autoaugment(x[None], None, self.policy)[0]
        return autoaugment(x, None, self.policy)

    def __repr__(self) -> str:
        return f"OfficialAutoAugment(policy={'v0' if self.policy == POLICY_V0 else 'custom'})"
