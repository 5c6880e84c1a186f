"""The files of a run directory."""

from pathlib import Path

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
FIGURES_DIR = "figures"
