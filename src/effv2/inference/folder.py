"""Self-describing model folders (the Hugging Face layout): config.json, model.safetensors, README.md.

``write_model_folder(checkpoint_or_run_dir, out_dir)`` is what a training run can call at its end;
``effv2 export --format folder`` calls it too. ``config.json`` holds the architecture spec, class
names and the data config (size, crop fraction, interpolation, mean, std); ``model.safetensors``
the (EMA when present) weights with the same metadata, unfolded so they can be fine-tuned;
``README.md`` the model card: recipe, data, metrics, effv2 and torch versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..io.atomic import atomic_write_text
from ..io.weights import save_weights

FOLDER_FORMAT = "effv2-model-folder"


def _run_dir_of(src: Path, weights: Path) -> Path | None:
    """The run folder a checkpoint belongs to (RUN/checkpoints/x.safetensors), if it is one."""
    for cand in (src, weights.parent.parent):
        if (cand / "checkpoints").is_dir():
            return cand
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return out if isinstance(out, dict) else {}


def model_config(loaded: Any) -> dict[str, Any]:
    """The config.json of a loaded model (also what exported files carry in their metadata)."""
    from .. import __version__

    model = loaded.model
    card = model.card
    return {
        "format": FOLDER_FORMAT,
        "format_version": 1,
        "library": "effv2",
        "model_name": card.name if card is not None else None,
        "spec": model.spec.to_dict(),
        "card": card.to_dict() if card is not None else None,
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "classes": list(loaded.classes),
        "data_config": loaded.data_config.to_dict(),
        "weights": loaded.used,
        "effv2_version": __version__,
        "torch_version": torch.__version__,
    }


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card_markdown(config: dict[str, Any], *, recipe: Any, state: dict, summary: dict, source: str) -> str:
    name = config.get("model_name") or "effv2 model"
    lines = [
        "---",
        "library_name: effv2",
        "tags: [image-classification, efficientnetv2, effv2]",
        "---",
        "",
        f"# {name}",
        "",
        f"EfficientNetV2 image classifier ({config['num_classes']} classes, {config['in_chans']} input channels), "
        f"{config['weights']} weights of `{source}`.",
        "",
        "```python",
        "import effv2",
        "from PIL import Image",
        "",
        'model = effv2.load("PATH/TO/THIS/FOLDER")',
        'probs = model(model.transform(Image.open("image.jpg"))[None]).softmax(1)',
        "```",
        "",
        "## Architecture",
        "",
        f"- spec: `{json.dumps(config['spec'], separators=(',', ':'))}`",
    ]
    params = config.get("_params")
    if params:
        lines.append(f"- parameters: {params:,}")
    dc = config["data_config"]
    lines += [
        "",
        "## Preprocessing",
        "",
        f"- size {dc['size']}, crop mode {dc['crop_mode']}, crop fraction {dc['crop_fraction']}, "
        f"interpolation {dc['interpolation']}",
        f"- mean {list(dc['mean'])}, std {list(dc['std'])} (0..1 scale)",
        "",
        "## Data",
        "",
        f"- source: {summary.get('data') or state.get('data') or 'unknown'}",
        f"- classes: {', '.join(map(str, config['classes'][:20]))}{' ...' if len(config['classes']) > 20 else ''}",
        "",
        "## Metrics",
        "",
    ]
    keys = ("top1", "top5", "best_top1", "test_top1", "test_top5", "test_weights", "epochs", "images_seen", "wall_s")
    metrics = {k: summary[k] for k in keys if summary.get(k) is not None}
    lines += [f"- {k}: {_fmt(v)}" for k, v in metrics.items()] or ["- no summary.json found beside the checkpoint"]
    lines += ["", "## Training recipe", ""]
    lines += ["```json", json.dumps(recipe, indent=2, default=str), "```"] if recipe else ["- not recorded"]
    lines += [
        "",
        "## Versions",
        "",
        f"- written by effv2 {config['effv2_version']}, torch {config['torch_version']}",
    ]
    trained = {k: state.get(k) for k in ("effv2_version", "torch_version") if state.get(k)}
    if trained:
        lines.append(
            f"- trained with effv2 {trained.get('effv2_version', '?')}, torch {trained.get('torch_version', '?')}"
        )
    return "\n".join(lines) + "\n"


def write_model_folder(
    checkpoint_or_run_dir: str | Path | None, out_dir: str | Path, *, prefer_ema: bool = True, loaded: Any = None
) -> Path:
    """Write ``out_dir`` as a model folder from a checkpoint file, a run folder or another model folder,
    or from an already ``loaded`` model (a ``--pretrained`` SOURCE: ``Pretrained.loaded()``).

    Refuses a non-empty ``out_dir`` that is not already a model folder (one is overwritten).
    Returns ``out_dir``.
    """
    from ..models.flops import count_params
    from ..training.inference import MODEL_FOLDER_FILES, is_model_folder, load_for_inference

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_model_folder(out))):
        raise UsageError(f"{out}: exists and is not an (empty) model folder; choose a new path")
    if loaded is None:
        src = Path(checkpoint_or_run_dir)
        loaded = load_for_inference(src, prefer_ema=prefer_ema)
        run_dir = _run_dir_of(src, loaded.path)
    else:
        src, run_dir = loaded.meta.get("pretrained") or loaded.path, None
    config = model_config(loaded)
    summary = _read_json(run_dir / "summary.json") if run_dir else {}
    meta = loaded.meta
    state = meta.get("state") if isinstance(meta.get("state"), dict) else {}
    state = {**state, "effv2_version": meta.get("effv2_version"), "torch_version": meta.get("torch_version")}
    out.mkdir(parents=True, exist_ok=True)
    save_weights(
        loaded.model,
        out / MODEL_FOLDER_FILES[1],
        metadata={k: config[k] for k in ("classes", "data_config", "weights")},
    )
    atomic_write_text(out / MODEL_FOLDER_FILES[0], json.dumps(config, indent=2) + "\n")
    readme = model_card_markdown(
        {**config, "_params": count_params(loaded.model)},
        recipe=meta.get("recipe"),
        state=state,
        summary=summary,
        source=str(src),
    )
    atomic_write_text(out / "README.md", readme)
    return out
