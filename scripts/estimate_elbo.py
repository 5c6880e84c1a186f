"""ELBO, its terms, importance-sampled log p(x) and IWAE bounds for a checkpoint file.

The checkpoint carries its run's settings, so the data is loaded and binarized as in training.

    python scripts/estimate_elbo.py runs/X/checkpoints/best.pt --num-samples 5000 --json est.json --csv est.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_vae.runs.checkpoint import CheckpointError
from pyro_vae.cli import add_estimate_arguments, run_estimate
from pyro_vae.runs.config import ConfigError
from pyro_vae.data.formats import DataFileError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by pyro-vae train")
    add_estimate_arguments(parser)
    args = parser.parse_args()
    try:
        run_estimate(args.checkpoint, args)
    except (ConfigError, DataFileError, CheckpointError) as error:
        print(f"estimate_elbo.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
