"""The built-in models train to the same losses and metrics as before the bring-your-own-model redesign.

tests/data/builtin_models_before_redesign.json was recorded with the code of commit bcce5a1 (the
model built under torch.manual_seed(1234) and handed to that version's fit; 2 epochs on the bundled
sample, seed 0): train statistics, validation (and M2's test) scores per epoch, and the best
checkpoint's test scores.
"""

import json
from pathlib import Path

import pytest
import torch

from pyro_vae import SSVAE, VAE, ConditionalVAE, fit, load_dataset

RECORDED = json.loads((Path(__file__).parent / "data" / "builtin_models_before_redesign.json").read_text())
BUILT = {"vae": lambda: VAE(x_dim=784, z_dim=8, hidden_dim=64),
         "cvae": lambda: ConditionalVAE(x_dim=784, z_dim=8, hidden_dim=64),
         "ssvae": lambda: SSVAE(x_dim=784, z_dim=8, hidden_dim=64, labels=100)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILT))
def test_builtin_models_train_as_before_the_redesign(name, tmp_path):
    torch.manual_seed(1234)
    model = BUILT[name]()
    dataset = load_dataset("mnist-sample", valid_size=500, seed=0)
    result = fit(model, dataset, out=tmp_path, epochs=2, batch_size=100, device="cpu", seed=0, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    recorded = RECORDED[name]
    assert len(records) == len(recorded["epochs"])
    for record, before in zip(records, recorded["epochs"]):
        for split, values in before.items():
            assert record[split] == pytest.approx(values, rel=1e-5), (split, record["epoch"])
    assert result.best_epoch == recorded["best_epoch"]
    assert result.test == pytest.approx(recorded["test"], rel=1e-5)
