"""RandAugment as the official EfficientNetV2 code defines it, as batched uint8 tensor ops.

Source: google/automl, efficientnetv2/autoaugment.py (``distort_image_with_randaugment``,
``level_to_arg``, ``NAME_TO_FUNC`` and the op functions). What carries over:

- the pool: the 16 ops of ``available_ops`` (no Identity), each layer picks one uniformly;
- every picked op is applied: the code draws a ``prob`` in [0.2, 0.8] per op but no RandAugment op
  takes a ``prob`` argument and ``_apply_func_with_prob`` is never called, so the draw is unused;
- the magnitude scale: level / 10 with no upper clamp (values above 10 extrapolate);
- ``level_to_arg``: enhance factor (m/10)*1.8+0.1; posterize bits int(m/10*4) (TF clamps the shift
  8-bits to 0..7, so 1 to 8 bits are kept); solarize threshold int(m/10*256); solarize-add addend
  int(m/10*110) below 128; rotate (m/10)*30 degrees, shear (m/10)*0.3, translate (m/10)*100 pixels
  (absolute, whatever the image size), each with a random sign; cutout half-size int(m/10*40);
- fill 128 for pixels moved in from outside (``replace_value``) and for the cutout square;
- nearest-neighbour resampling for rotate/shear/translate (tensorflow_addons' default).

One deliberate deviation: the official ``contrast`` blends towards (pixel count / 256), a bug
(``reduce_sum`` of the histogram is the pixel count); here it blends towards the mean grey level,
as PIL's ImageEnhance.Contrast (which the official docstring says it is equivalent to) does.
Grey values use PIL's ITU-R 601-2 luma, and Sharpness rounds its smoothed image as PIL's filter does
(the official ``tf.cast`` truncates: 1 grey level before the blend). Single-channel images: Color is
the identity. Above magnitude 10 the levels extrapolate as the official formulas do; where a value
leaves the uint8 range it saturates (a Solarize threshold above 255 leaves the image as is, more than
8 Posterize bits keep all 8), which is what the formulas mean; the TF graph's own uint8 conversion of
such constants is not reproduced.

The batch path draws every random choice per image from one ``torch.Generator`` (ops, signs,
cutout centres, for all layers up front), groups the images by op and runs each op once per
group, so a batch costs at most 16 tensor calls per layer.
"""

from __future__ import annotations

import math

import torch

OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "SolarizeAdd",
)
SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})  # _randomly_negate_tensor
FILL = 128
MAX_LEVEL = 10.0
TRANSLATE_CONST = 100  # hparams.Config(cutout_const=40, translate_const=100) in distort_image_with_randaugment
CUTOUT_CONST = 40


def level_to_arg(name: str, magnitude: float) -> float | int | None:
    """The op's parameter at ``magnitude`` before any random sign (None: the op takes none)."""
    m = float(magnitude) / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return m * 30.0
    if name == "Posterize":
        return int(m * 4)
    if name == "Solarize":
        return int(m * 256)
    if name == "SolarizeAdd":
        return int(m * 110)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return m * 1.8 + 0.1
    if name in ("ShearX", "ShearY"):
        return m * 0.3
    if name in ("TranslateX", "TranslateY"):
        return m * float(TRANSLATE_CONST)
    if name == "Cutout":
        return int(m * CUTOUT_CONST)
    raise KeyError(name)


# --------------------------------------------------------------------------- the ops, on uint8 (N, C, H, W)
def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    shift = min(max(8 - int(bits), 0), 7)  # tf.bitwise shifts clamp the shift to 0..7 for uint8
    return (x >> shift) << shift


def solarize(x: torch.Tensor, threshold: int) -> torch.Tensor:
    if threshold > 255:  # every uint8 value is below it
        return x
    return torch.where(x < max(threshold, 0), x, 255 - x)


def solarize_add(x: torch.Tensor, addition: int, threshold: int = 128) -> torch.Tensor:
    if 0 <= addition <= 255 - threshold:  # below the threshold x + a <= 255: no clamp (the rest is not used)
        added = x + addition
    elif addition >= 0:  # in uint8 without overflow: x + a saturates at 255 exactly when x > 255 - a
        added = x.clamp(max=255 - min(addition, 255)) + min(addition, 255)
    else:
        added = (x.to(torch.int16) + addition).clamp_(0, 255).to(torch.uint8)
    return torch.where(x < threshold, added, x)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """The official ``blend``: degenerate + factor * (image - degenerate), truncated (clipped when extrapolating).

    ``degenerate`` broadcasts against ``image`` (a per-image mean, a one-channel grey image) and may be float.
    """
    if factor == 0.0:
        return degenerate.to(torch.uint8).expand_as(image).clone()
    if factor == 1.0:
        return image
    d = degenerate.float()
    out = image.float().sub_(d).mul_(factor).add_(d)
    return out.clamp_(0.0, 255.0).to(torch.uint8)  # float -> uint8 truncates, as tf.cast and PIL do


def _grey(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> int32 (N, 1, H, W) luma, PIL's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    if x.shape[1] == 1:
        return x.to(torch.int32)
    xi = x.to(torch.int32)
    return (xi[:, 0:1] * 19595 + xi[:, 1:2] * 38470 + xi[:, 2:3] * 7471 + 32768) >> 16


def color(x: torch.Tensor, factor: float) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return _blend(_grey(x), x, factor)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = _grey(x).float().mean(dim=(1, 2, 3), keepdim=True).add_(0.5).floor_()  # PIL: int(mean + 0.5)
    return _blend(mean, x, factor)


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 0.0 or factor == 1.0:
        return _blend(torch.zeros((), dtype=torch.uint8, device=x.device), x, factor)
    return x.float().mul_(factor).clamp_(0.0, 255.0).to(torch.uint8)  # blend towards 0: factor * x


def sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 inside, the border kept, then blend."""
    N, C, H, W = x.shape
    if H < 3 or W < 3 or factor == 1.0:
        return x
    xf = x.float()  # integer sums up to 13 * 255: exact in float32
    rows = xf[:, :, :-2] + xf[:, :, 1:-1] + xf[:, :, 2:]  # separable 3x3 box sum
    total = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]).add_(xf[:, :, 1:-1, 1:-1], alpha=4)
    degenerate = xf.clone()
    # rounded (total / 13 is never k + 1/2, and at least 1/26 away from it: no float32 doubt)
    degenerate[:, :, 1:-1, 1:-1] = total.div_(13.0).add_(0.5).floor_()
    if factor == 0.0:
        return degenerate.to(torch.uint8)
    out = xf.sub_(degenerate).mul_(factor).add_(degenerate)
    return out.clamp_(0.0, 255.0).to(torch.uint8)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True).float()
    hi = x.amax(dim=(2, 3), keepdim=True).float()
    scale = 255.0 / (hi - lo).clamp_(min=1.0)
    out = ((x.float() - lo) * scale).clamp_(0.0, 255.0).to(torch.uint8)
    return torch.where(hi > lo, out, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per channel (the official ``equalize``), all channels of all images at once."""
    N, C, H, W = x.shape
    offsets = torch.arange(N * C, dtype=torch.int32, device=x.device)[:, None] * 256
    keys = x.reshape(N * C, H * W).to(torch.int32) + offsets  # each channel's values in its own 256 bins
    hist = torch.bincount(keys.reshape(-1), minlength=N * C * 256).reshape(N * C, 256)
    top = x.reshape(N * C, H * W).amax(dim=1, keepdim=True).to(torch.int64)  # the last non-zero bin
    step = (H * W - hist.gather(1, top)) // 255  # (N*C, 1)
    safe = step.clamp(min=1)
    cum = hist.cumsum(1) - hist  # counts below each value: the lut "shifted, prepending 0"
    lut = ((cum + safe // 2) // safe).clamp_(0, 255).to(torch.uint8)
    out = lut.reshape(-1).index_select(0, keys.reshape(-1)).reshape(N, C, H, W)  # int32 index: 5x faster than [keys]
    return torch.where((step == 0).reshape(N, C, 1, 1), x, out)


_GRIDS: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    if (h, w) not in _GRIDS:
        ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        _GRIDS[(h, w)] = (xs, ys)
    return _GRIDS[(h, w)]


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, (v + 0.5).floor_(), (v - 0.5).ceil_())  # std::round, as tfa's nearest


def _index_maps(mats: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float (M, 6) transforms -> int64 (M, h*w) source pixel of each output pixel, bool (M, h*w) outside.

    Row (a, b, c, d, e, f): output (x, y) <- input (a x + b y + c, d x + e y + f), nearest
    (tensorflow_addons' transform convention and its std::round).
    """
    xs, ys = _grid(h, w)
    m = mats.to(torch.float32)[:, :, None, None]
    sx = _round_half_away(torch.addcmul(m[:, 2], m[:, 0], xs).addcmul_(m[:, 1], ys))  # (M, h, w)
    sy = _round_half_away(torch.addcmul(m[:, 5], m[:, 3], xs).addcmul_(m[:, 4], ys))
    bad = (sx < 0) | (sx > w - 1) | (sy < 0) | (sy > h - 1)
    idx = sy.mul_(w).add_(sx).masked_fill_(bad, 0).to(torch.int64)
    return idx.reshape(-1, h * w), bad.reshape(-1, h * w)


def _gather_fill(x: torch.Tensor, idx: torch.Tensor, bad: torch.Tensor, fill: int = FILL) -> torch.Tensor:
    N, C, H, W = x.shape
    idx, bad = idx.to(x.device), bad.to(x.device)
    out = x.reshape(N, C, H * W).gather(2, idx[:, None].expand(N, C, H * W))
    return out.masked_fill_(bad[:, None], fill).reshape(N, C, H, W)


def _affine_nearest(x: torch.Tensor, mats: torch.Tensor, fill: int = FILL) -> torch.Tensor:
    """Each image through its own transform (``mats`` float (N, 6), see ``_index_maps``), ``fill`` outside."""
    idx, bad = _index_maps(mats, x.shape[-2], x.shape[-1])
    return _gather_fill(x, idx, bad, fill)


def _mats(name: str, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """float64 (N, 6) transforms of a geometric op at signed values ``v`` (N,)."""
    v = v.to(torch.float64)
    z, o = torch.zeros_like(v), torch.ones_like(v)
    if name == "Rotate":  # tfa.image.rotate (angles_to_projective_transforms), about ((w-1)/2, (h-1)/2)
        a = v * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
        y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
        return torch.stack([cos, -sin, x_off, sin, cos, y_off], 1)
    if name == "ShearX":  # [1, level, 0, 0, 1, 0]
        return torch.stack([o, v, z, z, o, z], 1)
    if name == "ShearY":  # [1, 0, 0, level, 1, 0]
        return torch.stack([o, z, z, v, o, z], 1)
    if name == "TranslateX":  # tfa translate by -pixels: output x <- input x + pixels
        return torch.stack([o, z, v, z, o, z], 1)
    if name == "TranslateY":
        return torch.stack([o, z, z, z, o, v], 1)
    raise KeyError(name)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """tfa.image.rotate about the centre; ``degrees`` float (N,), one per image."""
    return _affine_nearest(x, _mats("Rotate", degrees, *x.shape[-2:]))


def shear_x(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return _affine_nearest(x, _mats("ShearX", level, *x.shape[-2:]))


def shear_y(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return _affine_nearest(x, _mats("ShearY", level, *x.shape[-2:]))


def translate_x(x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Output (x, y) <- input (x + pixels, y): positive pixels move the content left."""
    return _affine_nearest(x, _mats("TranslateX", pixels, *x.shape[-2:]))


def translate_y(x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return _affine_nearest(x, _mats("TranslateY", pixels, *x.shape[-2:]))


_SIGNED_MAPS: dict[tuple[str, float, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _signed_geometric(name: str, x: torch.Tensor, value: float, sign: torch.Tensor) -> torch.Tensor:
    """A geometric op at +-value: the two index maps are cached per (op, value, size), then one gather."""
    H, W = x.shape[-2:]
    key = (name, value, H, W)
    if key not in _SIGNED_MAPS:
        if len(_SIGNED_MAPS) > 256:
            _SIGNED_MAPS.clear()
        _SIGNED_MAPS[key] = _index_maps(_mats(name, torch.tensor([value, -value]), H, W), H, W)
    idx, bad = _SIGNED_MAPS[key]
    neg = (sign < 0).to(torch.int64)
    return _gather_fill(x, idx[neg], bad[neg])


def cutout(x: torch.Tensor, pad: int, cy: torch.Tensor, cx: torch.Tensor, fill: int = FILL) -> torch.Tensor:
    """Rows max(0, cy-pad)..min(H, cy+pad)-1 x the same for columns set to ``fill``; cy, cx int (N,)."""
    N, C, H, W = x.shape
    r = torch.arange(H, device=x.device)
    c = torch.arange(W, device=x.device)
    cy, cx = cy.to(x.device)[:, None], cx.to(x.device)[:, None]
    rows = (r >= cy - pad) & (r < cy + pad)  # (N, H)
    cols = (c >= cx - pad) & (c < cx + pad)
    box = rows[:, :, None] & cols[:, None, :]
    return torch.where(box[:, None], torch.full_like(x, fill), x)


# --------------------------------------------------------------------------- RandAugment over a batch
def apply_op(
    name: str,
    x: torch.Tensor,
    magnitude: float,
    sign: torch.Tensor | None = None,
    cy: torch.Tensor | None = None,
    cx: torch.Tensor | None = None,
) -> torch.Tensor:
    """One op on every image of uint8 (N, C, H, W); ``sign`` (N,) +-1 for the signed ops, centres for Cutout."""
    v = level_to_arg(name, magnitude)
    n = x.shape[0]
    if name in SIGNED:
        s = torch.ones(n) if sign is None else sign
        return _signed_geometric(name, x, float(v), s)
    if name == "AutoContrast":
        return autocontrast(x)
    if name == "Equalize":
        return equalize(x)
    if name == "Invert":
        return invert(x)
    if name == "Posterize":
        return posterize(x, v)
    if name == "Solarize":
        return solarize(x, v)
    if name == "SolarizeAdd":
        return solarize_add(x, v)
    if name == "Color":
        return color(x, v)
    if name == "Contrast":
        return contrast(x, v)
    if name == "Brightness":
        return brightness(x, v)
    if name == "Sharpness":
        return sharpness(x, v)
    if name == "Cutout":
        cy = torch.zeros(n, dtype=torch.int64) if cy is None else cy
        cx = torch.zeros(n, dtype=torch.int64) if cx is None else cx
        return cutout(x, v, cy, cx)
    raise KeyError(name)


def draw_choices(n: int, height: int, width: int, num_ops: int, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Every random choice of ``num_ops`` layers for n images: op index, sign, cutout centre, each (num_ops, n)."""
    return {
        "op": torch.randint(len(OPS), (num_ops, n), generator=gen),
        "sign": torch.where(torch.rand(num_ops, n, generator=gen) < 0.5, -1.0, 1.0),
        "cy": torch.randint(height, (num_ops, n), generator=gen),
        "cx": torch.randint(width, (num_ops, n), generator=gen),
    }


def randaugment(x: torch.Tensor, num_ops: int, magnitude: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, H, W): ``num_ops`` layers, one op drawn per image per layer.

    ``gen`` None draws from torch's global generator (the per-sample file path runs in a seeded scope).
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"randaugment needs uint8 images, got {x.dtype}")
    if num_ops <= 0 or x.shape[0] == 0:
        return x
    N, C, H, W = x.shape
    ch = draw_choices(N, H, W, num_ops, gen)
    per_row_copy = C * H * W >= 16384  # index_copy_ is slow for large rows on CPU (measured: 224 px 3x)
    for layer in range(num_ops):
        ops = ch["op"][layer]
        sign, cy, cx = ch["sign"][layer], ch["cy"][layer], ch["cx"][layer]
        counts = torch.bincount(ops, minlength=len(OPS)).tolist()
        if max(counts) == N:  # one op for all
            x = apply_op(OPS[int(ops[0])], x, magnitude, sign, cy, cx)
            continue
        # each op's group from one stable sort: gather its images, run the op once, write them back
        order = torch.argsort(ops, stable=True)
        out = torch.empty_like(x)
        for k, idx in enumerate(order.split(counts)):
            if len(idx):
                res = apply_op(OPS[k], x.index_select(0, idx.to(x.device)), magnitude, sign[idx], cy[idx], cx[idx])
                if per_row_copy:
                    for j, i in enumerate(idx.tolist()):
                        out[i].copy_(res[j])
                else:
                    out.index_copy_(0, idx.to(x.device), res)
        x = out
    return x


class OfficialRandAugment:
    """Per-sample transform (uint8 (C, H, W) or (N, C, H, W)), for file pipelines; draws from the global RNG.

    Picklable (plain attributes), so it goes to spawned loader workers.
    """

    def __init__(self, num_ops: int, magnitude: float) -> None:
        if num_ops < 0 or magnitude < 0:
            raise ValueError(f"num_ops and magnitude must be >= 0, got {num_ops}, {magnitude}")
        self.num_ops, self.magnitude = int(num_ops), float(magnitude)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.as_subclass(torch.Tensor)
        if x.ndim == 3:
            return randaugment(x[None], self.num_ops, self.magnitude)[0]
        return randaugment(x, self.num_ops, self.magnitude)

    def __repr__(self) -> str:
        return f"OfficialRandAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"
