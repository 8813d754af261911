"""Where a run's metrics go besides metrics.jsonl: curves.png, metrics.csv and TensorBoard.

metrics.jsonl stays the source of truth (the trainer writes it, a resume trims it to the resumed
step). Every sink here is a :class:`~effv2.training.callbacks.Callback` that mirrors it:

- ``CurvesPlot`` (always on): curves.png redrawn from metrics.jsonl after every evaluation, written
  atomically, so a long run can be watched while it trains.
- ``CSVLog`` (``--log csv``, the default): RUN_DIR/metrics.csv rebuilt from metrics.jsonl after
  every evaluation and at the start of a run (atomic rewrite). The header is the union of the
  records' keys in first-seen order, so a record with a new key adds a column (earlier rows leave
  it empty) and no value is ever dropped; after a resume the file is exactly metrics.jsonl again.
- ``TensorBoardLog`` (``--log tensorboard``): standard ``SummaryWriter`` event files under
  RUN_DIR/tensorboard/, every numeric value of each record as a scalar at the record's global
  step (tags in ``TAGS``), plus ``progress/img_per_s`` over the interval since the previous
  record. On resume the writer opens with ``purge_step`` at the last record kept in metrics.jsonl
  and writes that record again, so readers hide whatever the killed process logged past it and
  no step appears twice.

Only the main rank writes. A sink never decides anything about training.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import UsageError
from ..io.atomic import atomic_write_text
from .callbacks import Callback
from .report import plot_curves, read_jsonl

LOG_SINKS: tuple[str, ...] = ("csv", "tensorboard")
DEFAULT_LOG: tuple[str, ...] = ("csv",)
TENSORBOARD_DIR = "tensorboard"
CSV_FILE = "metrics.csv"

# metrics.jsonl key -> TensorBoard tag. Keys not named here: ``train_<part>`` -> ``train/<part>``
# (the task's loss parts), any other number -> ``metrics/<key>``. ``step`` is the x axis and
# booleans (``ema``) are settings, not curves.
TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "lr": "train/lr",
    "top1": "val/top1",
    "top5": "val/top5",
    "loss": "val/loss",
    "top1_stage": "val/top1_stage",
    "epoch": "schedule/epoch",
    "stage": "schedule/stage",
    "image_size": "schedule/image_size",
    "eval_size": "schedule/eval_size",
    "randaug": "schedule/randaug",
    "mixup": "schedule/mixup",
    "cutmix": "schedule/cutmix",
    "dropout": "schedule/dropout",
    "images_seen": "progress/images_seen",
    "wall_s": "progress/wall_s",
}
IMG_PER_S_TAG = "progress/img_per_s"


def parse_log(value: str | Sequence[str] | None, *, flag: str = "--log") -> tuple[str, ...]:
    """``"tensorboard,csv"`` / ``["csv"]`` / ``"none"`` -> the sinks, in ``LOG_SINKS`` order.
    ``None`` means the default (``DEFAULT_LOG``)."""
    if value is None:
        return DEFAULT_LOG
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(s).strip().lower() for s in items if str(s).strip()]
    if names == ["none"]:
        return ()
    if "none" in names:
        raise UsageError(f"{flag} {value!r}: none cannot be combined with a log sink")
    bad = [n for n in names if n not in LOG_SINKS]
    if bad or not names:
        shown = value if isinstance(value, str) else ",".join(map(str, value))
        what = f"unknown log sink {bad[0]!r}" if bad else "no log sink named"
        raise UsageError(
            f"{flag} {shown!r}: {what}; expected {', '.join(LOG_SINKS)}, several comma-separated "
            "(e.g. tensorboard,csv), or none"
        )
    return tuple(s for s in LOG_SINKS if s in names)


def tag_for(key: str) -> str:
    if key in TAGS:
        return TAGS[key]
    if key.startswith("train_"):
        return f"train/{key[len('train_') :]}"
    return f"metrics/{key}"


def scalars(record: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, float]:
    """The TensorBoard scalars of one metrics record: ``{tag: value}``.

    ``progress/img_per_s`` is the training throughput since ``previous`` (images over training
    wall time; the whole run so far when there is no previous record)."""
    out = {
        tag_for(k): float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }
    images, wall = record.get("images_seen"), record.get("wall_s")
    if isinstance(images, int | float) and isinstance(wall, int | float):
        if previous is not None:
            images, wall = images - previous.get("images_seen", 0), wall - previous.get("wall_s", 0)
        if wall > 0:
            out[IMG_PER_S_TAG] = images / wall
    return out


def metrics_csv(records: Iterable[dict[str, Any]]) -> str:
    """The records as CSV text: the union of their keys in first-seen order, a missing value an
    empty cell, floats written with ``repr`` (they read back exactly)."""
    records = list(records)
    header: dict[str, None] = {}
    for rec in records:
        header.update(dict.fromkeys(rec))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), restval="", lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in rec.items()})
    return buf.getvalue()


def _title(trainer: Any) -> str:
    return f"{trainer.info.model_name} on {trainer.bundle.source}"


class CurvesPlot(Callback):
    """curves.png after every evaluation (from metrics.jsonl; a failed plot never fails a run)."""

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if not trainer.is_main:
            return
        try:
            plot_curves(read_jsonl(trainer.metrics_path), trainer.out_dir / "curves.png", title=_title(trainer))
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            trainer.log(f"warning: curves.png not updated: {exc}")


class CSVLog(Callback):
    """RUN_DIR/metrics.csv, rebuilt from metrics.jsonl (see the module doc)."""

    def _write(self, trainer: Any) -> None:
        if trainer.is_main:
            try:
                atomic_write_text(trainer.out_dir / CSV_FILE, metrics_csv(read_jsonl(trainer.metrics_path)))
            except OSError as exc:
                raise UsageError(f"could not write {trainer.out_dir / CSV_FILE}: {exc.strerror or exc}") from None

    def on_fit_start(self, trainer: Any) -> None:
        self._write(trainer)  # a resumed run: metrics.jsonl was trimmed to the resumed step

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self._write(trainer)


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(
            "--log tensorboard needs the tensorboard package: pip install 'effv2[tensorboard]' "
            "(or pip install 'tensorboard>=2.16')"
        ) from None
    return SummaryWriter


class TensorBoardLog(Callback):
    """SummaryWriter event files in RUN_DIR/tensorboard/ (see the module doc)."""

    def __init__(self) -> None:
        self._writer_cls = _summary_writer()  # a missing package is an error before training starts
        self.writer = None
        self.previous: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.is_main:
            return
        kept = read_jsonl(trainer.metrics_path)  # a resume has trimmed it to the resumed step
        # Events at or after the last kept record's step are hidden by readers (purge_step), and
        # that record is written again: the killed process may have logged it, or not yet.
        purge = kept[-1]["step"] if kept else 0
        self.writer = self._writer_cls(log_dir=str(trainer.out_dir / TENSORBOARD_DIR), purge_step=purge)
        if kept:
            self.previous = kept[-2] if len(kept) > 1 else None
            self._add(kept[-1])

    def _add(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in scalars(record, self.previous).items():
            self.writer.add_scalar(tag, value, global_step=step)  # NaN too: nothing is dropped
        self.writer.flush()  # on disk before the next step: a kill loses nothing already recorded
        self.previous = record

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self._add(record)

    def on_fit_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def logging_callbacks(log: Sequence[str]) -> list[Callback]:
    """The sinks for ``log`` (already parsed by :func:`parse_log`), curves.png always first."""
    sinks: list[Callback] = [CurvesPlot()]
    if "csv" in log:
        sinks.append(CSVLog())
    if "tensorboard" in log:
        sinks.append(TensorBoardLog())
    return sinks
