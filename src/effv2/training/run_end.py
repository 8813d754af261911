"""The end of a run: the test split evaluated once with the weights validation chose, summary.json,
curves.png, RUN_DIR/model/ and the printed summary (a mixin of the Trainer)."""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import UsageError
from ..io.atomic import atomic_write_text
from ..io.checkpoint import checkpoint_path, load_checkpoint
from ..models.flops import count_params
from .report import plot_curves, read_jsonl


class RunEnd:
    def finish(self, completed: bool) -> dict[str, Any]:
        s = self.state
        self._flush_skipped()
        metrics = read_jsonl(self.metrics_path) if self.is_main else []
        final = metrics[-1] if metrics else {}
        summary: dict[str, Any] = {
            "model": self.info.model_name,
            "data": self.bundle.source,
            "params": count_params(self.model),
            "epochs": s.epoch,
            "completed": completed,
            "top1": final.get("top1"),
            "top5": final.get("top5"),
            "best_top1": s.best_top1,
            "train_s": round(s.wall_s, 2),
            "wall_s": round(s.wall_s, 2),
            "images_seen": s.images_seen,
            "img_per_s": round(s.images_seen / max(s.wall_s, 1e-9), 1),
            "nonfinite_steps": s.nonfinite_total,
            "skipped_files": len(self._skipped_seen),
            "run_dir": str(self.out_dir),
            "effv2_version": __version__,
            "torch_version": torch.__version__,
        }
        if self.bundle.test is not None and self.bundle.test is not self.bundle.val:
            # once, at the end, with the weights validation chose (checkpoints/best)
            model, which = self._best_model()
            flip = self._choose_flip(model, summary)
            test = self.evaluate(self.bundle.test, model=model, flip=flip)
            summary.update(
                test_top1=round(test["top1"], 4),
                test_top5=round(test["top5"], 4),
                test_n=test["n"],
                test_weights=which,
                test_flip=flip,
            )
        elif self.bundle.test is not None:  # no split of its own to choose on: the test split was the val split
            summary.update(test_top1=final.get("top1"), test_top5=final.get("top5"), test_weights="last (val = test)")
        if self.is_main:
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            self._write_model_folder()
            try:  # a plot must never fail a finished run
                plot_curves(
                    metrics, self.out_dir / "curves.png", title=f"{self.info.model_name} on {self.bundle.source}"
                )
            except Exception:  # noqa: BLE001
                pass
            self.print_summary(summary)
        return summary

    def _write_model_folder(self) -> None:
        """RUN_DIR/model/: the best weights as a self-describing model folder (config.json with the
        architecture, classes and preprocessing, model.safetensors, a README.md model card)."""
        from ..inference.folder import write_model_folder

        try:
            write_model_folder(self.out_dir, self.out_dir / "model")
        except (UsageError, OSError) as exc:  # the run itself is complete; say what is missing
            self.log(f"warning: {self.out_dir / 'model'} not written: {exc}")

    def _choose_flip(self, model: nn.Module, summary: dict[str, Any]) -> bool:
        """Flip-averaged evaluation for the test split: as the recipe says, or with ``eval_flip: auto``
        whichever of the two scores higher on the validation split (ties: without), recorded in the
        summary. Validation decides; the test split is then read once."""
        setting = self.recipe.eval_flip
        if setting != "auto":
            return bool(setting)
        plain = self.evaluate(self.bundle.val, model=model, flip=False)["top1"]
        flipped = self.evaluate(self.bundle.val, model=model, flip=True)["top1"]
        summary.update(val_top1_plain=round(plain, 4), val_top1_flip=round(flipped, 4))
        return flipped > plain

    def _best_model(self) -> tuple[nn.Module, str]:
        """The evaluation model with the weights of checkpoints/best (chosen on validation), or the
        current weights when no best checkpoint exists."""
        best = checkpoint_path(self.out_dir, "best")
        if not best.is_file():
            return self.eval_model, "last"
        ckpt = load_checkpoint(best, restore_rng_state=False)
        state = ckpt.ema_state if self.parts.ema is not None and ckpt.ema_state else ckpt.model_state
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(state)
        return model, f"best (epoch {ckpt.state.get('epoch')}, val top1 {ckpt.state.get('best_top1'):.2f}%)"

    def print_summary(self, summary: dict[str, Any]) -> None:
        if self.quiet:
            return
        lines = [
            f"done: {summary['model']} on {summary['data']}, {summary['epochs']} epochs in "
            f"{summary['train_s']:.0f}s ({summary['img_per_s']:.0f} img/s)",
            f"  eval top1 {summary['top1']:.2f}%  best {summary['best_top1']:.2f}%",
        ]
        if "test_top1" in summary and summary["test_top1"] is not None:
            lines.append(
                f"  test top1 {summary['test_top1']:.2f}%  top5 {summary['test_top5']:.2f}%  "
                f"({summary.get('test_weights', 'last')} weights"
                + (", flip-averaged: better on validation" if summary.get("test_flip") else "")
                + ")"
            )
        if summary["skipped_files"]:
            lines.append(f"  skipped {summary['skipped_files']} unreadable files (see {self.skipped_path})")
        if summary["nonfinite_steps"]:
            lines.append(f"  skipped {summary['nonfinite_steps']} non-finite steps")
        lines.append(f"  run folder: {summary['run_dir']}")
        print("\n".join(lines), flush=True)
