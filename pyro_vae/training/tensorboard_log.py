"""Optional TensorBoard logging of a run: per-epoch scalars and the figures training draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_vae.runs.config import ConfigError

TENSORBOARD_DIR = "tensorboard"


def summary_writer_class() -> type:
    """torch's ``SummaryWriter``; a :class:`ConfigError` naming the fix when ``tensorboard`` is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package; install it with "
                          "pip install 'pyro-vae[tensorboard]' (or pip install tensorboard), or drop "
                          "--tensorboard") from None
    return SummaryWriter


class TensorBoardLog:
    """Writes each epoch's metrics as scalars (``train/elbo``, ``valid/kl``, ...) and figures as images.

    ``writer`` is anything with SummaryWriter's ``add_scalar``, ``add_figure``, ``flush`` and
    ``close``; by default a ``torch.utils.tensorboard.SummaryWriter`` in ``RUN_DIR/tensorboard``,
    which needs the ``tensorboard`` package (``pip install "pyro-vae[tensorboard]"``).
    """

    def __init__(self, run_dir: Path, writer: Any = None) -> None:
        if writer is None:
            writer = summary_writer_class()(str(Path(run_dir) / TENSORBOARD_DIR))
        self.writer = writer

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Every number of a ``metrics.jsonl`` record, tagged ``split/name``, at step ``epoch``."""
        epoch = record["epoch"]
        for split in ("train", "valid", "test"):
            for name, value in record.get(split, {}).items():
                self.writer.add_scalar(f"{split}/{name}", value, epoch)
        for name in ("kl_weight", "seconds", "train_seconds"):
            if name in record:
                self.writer.add_scalar(f"run/{name}", record[name], epoch)
        self.writer.flush()

    def log_figures(self, figures: dict[str, Any], epoch: int) -> None:
        for name, figure in figures.items():
            self.writer.add_figure(name, figure, epoch, close=False)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
