"""
The swappable priors and guides: their log-densities against closed forms and
numerical integration, and that swapping one needs no change anywhere else.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO
from torch import nn

from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.fast import DiagonalNormalMixture
from pyro_iwae.models import ARCHITECTURES, GUIDES, PRIORS, VAE
from pyro_iwae.networks import GaussianLayer, IAFLayer
from pyro_iwae.objectives import make_objective
from pyro_iwae.training import train


def grid_integral(log_density, limit=8.0, points=401):
    """The integral of ``exp(log_density)`` over ``[-limit, limit]^2`` by the trapezoid rule."""
    axis = torch.linspace(-limit, limit, points, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1)  # [points, points, 2]
    density = log_density(z).exp()
    return torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis, dim=0).item()


def test_mixture_log_prob_matches_the_direct_sum_over_components():
    torch.manual_seed(0)
    logits, loc, scale = torch.randn(7), torch.randn(7, 3), torch.rand(7, 3) + 0.05
    z = 3 * torch.randn(4, 5, 3)
    direct = torch.logsumexp(
        logits.log_softmax(-1) + torch.distributions.Normal(loc, scale).log_prob(z[..., None, :]).sum(-1), -1
    )
    assert torch.allclose(DiagonalNormalMixture(logits, loc, scale).log_prob(z), direct, atol=1e-3)


@pytest.mark.parametrize("loc_offset", [0.0, 20.0])
def test_mixture_log_prob_in_float32_is_exact_near_narrow_components(loc_offset):
    # the encoder's Gaussians that a VampPrior mixes reach scales of 0.01: expanded in float32, the squared
    # distance z^2/s^2 - 2 z m/s^2 + m^2/s^2 lost 0.86 nats here, and 40 with the means near 20
    torch.manual_seed(0)
    loc = loc_offset + 3 * torch.randn(10, 50)
    scale = torch.full((10, 50), 0.01)
    logits = torch.randn(10)
    z = loc[torch.randint(10, (200,))] + 0.01 * torch.randn(200, 50)  # where the mixture has its mass
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits.double()),
        torch.distributions.Independent(torch.distributions.Normal(loc.double(), scale.double()), 1),
    ).log_prob(z.double())
    log_prob = DiagonalNormalMixture(logits, loc, scale).log_prob(z)
    assert log_prob.dtype == torch.float32
    assert torch.allclose(log_prob.double(), reference, rtol=0, atol=1e-3)
    # float64 values of float32 parameters: float64 out
    assert DiagonalNormalMixture(logits, loc, scale).log_prob(z.double()).dtype == torch.float64


def test_mixture_log_prob_has_the_gradients_of_its_closed_form():
    torch.manual_seed(0)
    logits, loc = torch.randn(3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    scale, z = torch.rand(3, 2, dtype=torch.float64) + 0.3, torch.randn(4, 2, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (logits, loc, scale, z))
    assert torch.autograd.gradcheck(lambda *a: DiagonalNormalMixture(*a[:3]).log_prob(a[3]), inputs)


def test_mixture_integrates_to_one_and_samples_match_its_moments():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64)
    loc = torch.tensor([[-2.0, 0.0], [1.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    scale = torch.tensor([[0.5, 1.0], [0.3, 0.4], [1.0, 0.2]], dtype=torch.float64)
    mixture = DiagonalNormalMixture(logits, loc, scale)
    assert grid_integral(mixture.log_prob) == pytest.approx(1.0, abs=1e-6)
    samples = mixture.expand((100000,)).sample()
    mean = logits.softmax(-1) @ loc
    assert torch.allclose(samples.mean(0), mean, atol=0.02)


def test_mixture_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="num_components"):
        DiagonalNormalMixture(torch.zeros(3), torch.zeros(4, 2), torch.ones(4, 2))


def test_standard_and_learned_normal_priors_are_gaussians():
    z = torch.randn(6, 50)
    vae = VAE(prior="normal")
    assert torch.allclose(vae.prior().log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))
    vae = VAE(prior="learned-normal")
    with torch.no_grad():
        vae.prior.loc.fill_(0.5)
        vae.prior.log_scale.fill_(math.log(2.0))
    expected = -0.5 * ((z - 0.5) / 2.0).pow(2).sum(-1) - 50 * math.log(2.0 * math.sqrt(2 * math.pi))
    assert torch.allclose(vae.prior().log_prob(z), expected, atol=1e-4)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_mixture_priors_integrate_to_one_in_two_dimensions(prior):
    torch.manual_seed(0)
    vae = VAE(hidden_dims=(20,), latent_dims=(2,), x_dim=10, prior=prior).double()
    assert grid_integral(lambda z: vae.prior().log_prob(z).detach()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("layers", sorted(ARCHITECTURES))
def test_vamp_prior_is_the_mean_of_the_guide_at_the_pseudo_inputs(layers):
    """Tomczak & Welling (2018), eq. 9, by hand: (1/J) sum_j N(z; loc(u_j), scale(u_j))."""
    torch.manual_seed(0)
    vae = VAE(*ARCHITECTURES[layers], prior="vamp")
    z = torch.randn(3, vae.latent_dims[-1])
    u = vae.prior.pseudo_inputs.clamp(0, 1)
    for layer in vae.encoder[:-1]:
        u = layer.loc_scale(u)[0]
    components = torch.distributions.Normal(*vae.encoder[-1].loc_scale(u))  # [500, dim]
    expected = components.log_prob(z[:, None, :]).sum(-1).logsumexp(-1) - math.log(500)
    assert torch.allclose(vae.prior().log_prob(z), expected, atol=1e-3)
    assert not any(name.startswith("prior.encoder") for name, _ in vae.named_parameters())


def test_iaf_guide_density_integrates_to_one_in_two_dimensions():
    torch.manual_seed(0)
    layer = IAFLayer(in_dim=3, hidden_dim=8, out_dim=2).double()
    with torch.no_grad():  # flows far from the identity, so the test sees them
        for p in layer.flows.parameters():
            p.mul_(3.0)
    q = layer(torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64))
    assert grid_integral(lambda z: q.log_prob(z).detach(), limit=12.0, points=601) == pytest.approx(1.0, abs=1e-3)


def test_iaf_log_density_is_the_base_density_minus_the_log_jacobian():
    """Change of variables by autograd: log q(z) = log q0(eps) - log |det dz/deps|."""
    torch.manual_seed(0)
    layer = IAFLayer(in_dim=3, hidden_dim=8, out_dim=4).double()
    x = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    q = layer(x)
    eps = q.base_dist.sample()

    def flow(e):
        for transform in q.transforms:
            e = transform(e)
        return e

    z = flow(eps)
    log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(flow, eps))[1]
    assert q.log_prob(z).item() == pytest.approx((q.base_dist.log_prob(eps) - log_det).item(), abs=1e-8)


class LaplacePrior(nn.Module):
    """A user's own prior: a learnable-scale Laplace, as in the README."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Laplace(torch.zeros_like(self.log_scale), self.log_scale.exp()).to_event(1)


class StudentTLayer(GaussianLayer):
    """A user's own guide layer: a Student-t with the Gaussian layer's location and scale."""

    def forward(self, inputs: torch.Tensor) -> dist.TorchDistribution:
        return dist.StudentT(5.0, *self.loc_scale(inputs)).to_event(1)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("prior, guide", [(p, g) for p in PRIORS for g in GUIDES] + [(LaplacePrior, StudentTLayer)])
def test_swapping_needs_no_change_to_training_or_evaluation(prior, guide, objective):
    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = VAE(*ARCHITECTURES[2], prior=prior if isinstance(prior, str) else prior(50), guide=guide)
    images = torch.bernoulli(torch.full((40, 784), 0.2))
    swapped = {n: p.detach().clone() for n, p in vae.named_parameters() if n.startswith(("prior.", "encoder."))}
    history = train(vae, make_objective(objective, 3), images, [1e-3] * 2, progress=False)
    assert len(history) == 2
    # training reaches every parameter of the swapped prior and guide
    assert [n for n, p in vae.named_parameters() if n in swapped and not torch.equal(p, swapped[n])] == list(swapped)
    # the evaluator gives, per image, what Pyro's own RenyiELBO(alpha=0) and Trace_ELBO compute from the same draws
    for i in range(2):
        image = images[i : i + 1]
        pyro.set_rng_seed(i)
        estimate = log_likelihood(vae.model, vae.guide, image, num_particles=50, particle_chunk_size=50)
        pyro.set_rng_seed(i)
        renyi = RenyiELBO(alpha=0, num_particles=50, vectorize_particles=True, max_plate_nesting=1)
        renyi_loss = renyi.loss(vae.model, vae.guide, image)
        pyro.set_rng_seed(i)
        elbo = Trace_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
        elbo_loss = elbo.loss(vae.model, vae.guide, image)
        assert estimate.log_likelihood.item() == pytest.approx(-renyi_loss, rel=1e-5)
        assert estimate.elbo.item() == pytest.approx(-elbo_loss, rel=1e-5)
        assert renyi_loss < elbo_loss - 0.1  # the test tells the two apart


def test_unknown_prior_or_guide_names_the_choices():
    with pytest.raises(ValueError, match="normal, learned-normal, mog, vamp"):
        VAE(prior="cauchy")
    with pytest.raises(ValueError, match="normal, iaf"):
        VAE(guide="planar")
