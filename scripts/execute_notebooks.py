"""Run the tutorial notebooks in full (not smoke) mode and store them with their outputs.

Each notebook is executed top to bottom by nbclient in a scratch directory (its runs are written
there), on the dataset named by ``--dataset`` / ``--data-dir`` (passed to the notebooks as
``PYRO_VAE_DATASET`` and ``PYRO_VAE_DATA_DIR``), and saved in place with its outputs and, in its
metadata under ``pyro_vae``, the SHA-256 of its code cells' source, the dataset and the seconds it
took: ``tests/test_notebooks.py`` checks that the stored outputs were produced by the stored source.

    python scripts/execute_notebooks.py --dataset mnist --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def source_hash(notebook: nbformat.NotebookNode) -> str:
    """SHA-256 of the code cells' source, in order: what the stored outputs must have come from."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def execute(path: Path, dataset: str, data_dir: str, timeout: int, smoke: bool = False) -> float:
    """Execute ``path`` (in full mode unless ``smoke``) and save it with its outputs and provenance;
    returns the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    environment = {"PYRO_VAE_DATASET": dataset, "PYRO_VAE_DATA_DIR": str(Path(data_dir).resolve())}
    if smoke:
        environment["CI"] = "1"  # the notebooks read CI as "smoke mode"
    saved = {name: os.environ.pop(name, None) for name in [*environment, "CI"]}
    os.environ.update(environment)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": scratch}}).execute()
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    seconds = time.perf_counter() - started
    notebook.metadata["pyro_vae"] = {"source_sha256": source_hash(notebook), "dataset": dataset,
                                     "mode": "smoke" if smoke else "full", "executed": date.today().isoformat(),
                                     "seconds": round(seconds)}
    nbformat.write(notebook, path)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--dataset", default="mnist", help="what the notebooks train on (mnist, mnist-sample, ...)")
    parser.add_argument("--data-dir", default="data", help="where that dataset is (torchvision layout)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds allowed per cell")
    parser.add_argument("--smoke", action="store_true", help="smoke mode (seconds; for checking this script)")
    args = parser.parse_args()
    for path in args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")):
        seconds = execute(path, args.dataset, args.data_dir, args.timeout, args.smoke)
        print(f"{path.name}: executed on {args.dataset} in {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
