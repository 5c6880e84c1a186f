"""Model/guide pairs, one file per built-in family, each written on the contract every model follows.

The contract (checked by :func:`pyro_vae.contract.check_model`): a model is a ``torch.nn.Module``
(or ``PyroModule``) with

- ``model(x, y=None)``: the generative model; observed site(s) with ``obs=x``, latent sites, all
  inside ``pyro.plate("data", x.shape[0])`` at dim -1 (per-datapoint dimensions in
  ``.to_event``), so particles can be vectorised by a plate at dim -2;
- ``guide(x, y=None)``: the amortized posterior over the same latent sites, in the same plate.

No base class is needed. Optional, each switching on a feature when present:

- ``needs_labels = True``: the toolkit passes the data's labels as ``y`` (a model of p(x|y), a
  CVAE); otherwise ``y`` is None and scores are of p(x);
- ``observes_binary_data = False``: the likelihood scores grey values, so ``auto`` binarization
  leaves the data as it is (default: binary data, grey images binarized);
- ``encode(x, y=None)`` -> a summary z per datapoint (default: the guide's mean at site ``z``);
- ``decode(z, y=None)`` -> the mean of p(x|z) (reconstructions, interpolations, traversals,
  manifold); ``num_classes`` with a ``decode`` that takes ``y``: the class-conditional grid;
- ``sample_images(num_images)`` -> means of p(x|z), z ~ p(z) (default: the means of the observed
  site in a trace of the model, whose latent sites are then drawn from the prior);
- ``training_plan(settings, dataset, binarize)``: a family's own training
  (:mod:`pyro_vae.training.plan`; default: the chosen ELBO on mini-batches).

Training replays each step from a graph recorded on the first batch of each shape
(:mod:`pyro_vae.training.capture`). A model whose model or guide reads a tensor's value in Python,
or whose guide has sites without reparameterization, trains eagerly (the log says why); Python
state that changes between steps must live in tensors (or the loss module sets ``capturable = False``).
"""

from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.hvae import TwoLayerVAE
from pyro_vae.models.ssvae import SSVAE
from pyro_vae.models.vae import VAE

__all__ = ["SSVAE", "VAE", "ConditionalVAE", "TwoLayerVAE"]
