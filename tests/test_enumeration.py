"""The ELBO with the guide's discrete site summed out: Pyro's TraceEnum_ELBO on the same draws, value and gradients."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn

from pyro_vae.inference.enumeration import enumerated_negative_elbo
from pyro_vae.models import SSVAE, VAE


def join(a, b):
    """Concatenate the last dimensions of ``a`` and ``b``, broadcasting the others (the enumerated class's)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)


class FeaturesThenClass(nn.Module):
    """A guide with a continuous site upstream of the class (as M1+M2's features), a model of grey x."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.classifier = nn.Linear(5, 4), nn.Linear(4, 3)
        self.style, self.decoder = nn.Linear(4 + 3, 2), nn.Linear(2 + 3, 4)

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(x.shape[0], 3)), obs=y)
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            u = pyro.sample("u", dist.Normal(self.decoder(join(z, nn.functional.one_hot(y, 3).to(x.dtype))),
                                             1.0).to_event(1))
            pyro.sample("x", dist.Normal(u.sum(-1, keepdim=True).expand(x.shape), 0.5).to_event(1), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Normal(self.features(x), 0.3).to_event(1))
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(u)))
            pyro.sample("z", dist.Normal(self.style(join(u, nn.functional.one_hot(y, 3).to(x.dtype))), 0.5).to_event(1))


@pytest.fixture
def float64():
    """Networks and draws in double precision, so that two summation orders agree to ~1e-12."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("make_model, x", [
    (lambda: SSVAE(x_dim=784, z_dim=3, hidden_dim=16), torch.rand(6, 784).bernoulli(generator=torch.Generator().manual_seed(0))),
    (FeaturesThenClass, torch.randn(6, 5, generator=torch.Generator().manual_seed(0))),
])
def test_equals_trace_enum_elbo_on_the_same_draws(make_model, x, float64):
    torch.manual_seed(0)
    model, x = make_model(), x.double()
    parameters = list(model.parameters())
    pyro.set_rng_seed(3)
    expected = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, config_enumerate(model.guide), x)
    expected_gradients = torch.autograd.grad(expected, parameters)
    pyro.set_rng_seed(3)
    loss = enumerated_negative_elbo(model.model, model.guide, x)
    gradients = torch.autograd.grad(loss, parameters)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-9, atol=1e-12)


def test_refuses_a_guide_without_exactly_one_discrete_site():
    x = torch.rand(4, 784).bernoulli()
    vae = VAE(z_dim=2, hidden_dim=8)
    with pytest.raises(ValueError, match="exactly one discrete site of the guide; this guide enumerates none"):
        enumerated_negative_elbo(vae.model, vae.guide, x)

    def two_classes_guide(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))
            pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))

    with pytest.raises(ValueError, match=r"enumerates \['a', 'b'\]\. Use pyro.infer.TraceEnum_ELBO"):
        enumerated_negative_elbo(lambda x, y=None: None, two_classes_guide, x)


def class_site(x, observed=None):
    return pyro.sample("y", dist.Categorical(logits=torch.zeros(x.shape[0], 3)), obs=observed)


def test_refuses_a_model_latent_the_guide_lacks_and_a_guide_latent_without_reparameterization():
    x = torch.rand(4, 5)

    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            class_site(x, y)
            pyro.sample("angle", dist.VonMises(torch.zeros(x.shape[0]), 1.0))

    def guide_without_angle(x, y=None):
        with pyro.plate("data", x.shape[0]):
            class_site(x)

    with pytest.raises(ValueError, match=r"every latent of the model in the guide \(missing: \['angle'\]\)"):
        enumerated_negative_elbo(model, guide_without_angle, x)

    def guide_with_angle(x, y=None):
        with pyro.plate("data", x.shape[0]):
            class_site(x)
            pyro.sample("angle", dist.VonMises(torch.zeros(x.shape[0]), 2.0))  # no reparameterized sampler

    with pytest.raises(ValueError, match=r"other latents reparameterized \(not: \['angle'\]\)"):
        enumerated_negative_elbo(model, guide_with_angle, x)
