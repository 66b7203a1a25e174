"""
Models a Pyro user brings, none of them ours: the evaluator and the objectives give
the exact number (closed form, enumeration, or a hand computation on replayed
samples) or refuse with a message that names the site and the fix.

Most tests use a guide equal to the exact posterior: then every weight
``p(x_i, z) / q(z | x_i)`` equals ``p(x_i)``, so the estimate and the IWAE loss are
exact for any number of particles, and any mistake in forming the weights per
data point (a wrong sum, scale, plate or site) shows as a wrong number.
"""

import contextlib
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuideList,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalMessenger,
)
from pyro.nn import PyroParam
from pyro.poutine.guide import GuideMessenger
from torch import nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal

from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.importance import DataPlateError
from pyro_iwae.objectives import IWAE_ELBO, make_objective

F64 = torch.float64


def near(a, b, tol=1e-9):
    return torch.allclose(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), rtol=0, atol=tol)


class Factor:
    """p(z) = N(0, I_d), x | z = N(W z + b, sigma^2 I); posterior and marginal in closed form (any W)."""

    def __init__(self, latent_dim=2, x_dim=4, sigma=0.6, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.W = torch.randn(x_dim, latent_dim, generator=generator, dtype=F64)
        self.b = torch.randn(x_dim, generator=generator, dtype=F64)
        self.sigma = sigma

    def data(self, num_data, seed=1):
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(num_data, self.W.shape[1], generator=generator, dtype=F64)
        noise = torch.randn(num_data, self.W.shape[0], generator=generator, dtype=F64)
        return z @ self.W.T + self.b + self.sigma * noise

    def log_marginal(self, x, observed=None):
        """log p(x_observed) per row; ``observed`` ``[N, D]`` bool (default all)."""
        observed = torch.ones_like(x, dtype=torch.bool) if observed is None else observed
        out = []
        for row, mask in zip(x, observed):
            W, b = self.W[mask], self.b[mask]
            covariance = W @ W.T + self.sigma**2 * torch.eye(int(mask.sum()), dtype=F64)
            out.append(
                MultivariateNormal(b, covariance).log_prob(row[mask]) if mask.any() else torch.tensor(0.0, dtype=F64)
            )
        return torch.stack(out)

    def posterior(self, x, observed=None):
        """loc ``[N, d]`` and scale_tril ``[N, d, d]`` of p(z | x_observed)."""
        observed = torch.ones_like(x, dtype=torch.bool) if observed is None else observed
        m = observed.to(F64)
        precision = (
            torch.eye(self.W.shape[1], dtype=F64) + torch.einsum("nd,di,dj->nij", m, self.W, self.W) / self.sigma**2
        )
        covariance = torch.linalg.inv(precision)
        loc = torch.einsum("nij,nj->ni", covariance, ((x - self.b) * m) @ self.W / self.sigma**2)
        return loc, torch.linalg.cholesky(covariance)


# ----------------------------------------------------------------------------------------------------------------------
# Pyro's examples/vae/vae.py, model and guide as written there


class Encoder(nn.Module):
    def __init__(self, z_dim=3, hidden_dim=16):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = (
            nn.Linear(784, hidden_dim),
            nn.Linear(hidden_dim, z_dim),
            nn.Linear(hidden_dim, z_dim),
        )
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x.reshape(-1, 784)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim=3, hidden_dim=16):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden_dim), nn.Linear(hidden_dim, 784)
        self.softplus, self.sigmoid = nn.Softplus(), nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))


class PyroExampleVAE(nn.Module):
    def __init__(self, z_dim=3):
        super().__init__()
        self.encoder, self.decoder, self.z_dim = Encoder(z_dim), Decoder(z_dim), z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    def hand_log_weights(self, x, z):
        loc, scale = self.encoder(x)
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1) + Bernoulli(probs=self.decoder(z)).log_prob(x).sum(-1)
        return log_p - Normal(loc, scale).log_prob(z).sum(-1)


def test_pyros_vae_example_is_scored_per_image_as_by_hand():
    torch.manual_seed(0)
    vae = PyroExampleVAE()
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    guide = poutine.trace(vae.guide)
    estimate = log_likelihood(vae.model, guide, x, num_particles=40, particle_chunk_size=40)
    z = guide.msngr.trace.nodes["latent"]["value"]  # [40, 6, 3]: the evaluator's one pass
    with torch.no_grad():
        expected = vae.hand_log_weights(x, z).logsumexp(0) - math.log(40)
    assert torch.allclose(estimate.log_likelihood, expected, atol=1e-4)

    loss = make_objective("iwae", 5).loss(vae.model, guide, x)
    z = guide.msngr.trace.nodes["latent"]["value"]
    with torch.no_grad():
        expected = -(vae.hand_log_weights(x, z).logsumexp(0) - math.log(5)).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# any plate name; deterministic sites; conditional models with several arguments


def factor_model(fa, plate_name="data"):
    def model(x):
        with pyro.plate(plate_name, x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(fa.W.shape[1]), 1.0).to_event(1))
            loc = pyro.deterministic("loc", z @ fa.W.T + fa.b, event_dim=1)
            pyro.sample("x", dist.Normal(loc, fa.sigma).to_event(1), obs=x)
        pyro.deterministic("summary", z.sum())  # outside every plate: no density, no reason to refuse

    return model


def factor_guide(fa, plate_name="data"):
    def guide(x):
        loc, scale_tril = fa.posterior(x)
        with pyro.plate(plate_name, x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))

    return guide


@pytest.mark.parametrize("plate_name", ["data", "batch", "mnist", "particles"])  # "particles" was our own
def test_the_data_plate_is_found_by_structure_not_by_name(plate_name):
    fa = Factor()
    x = fa.data(7)
    model, guide = factor_model(fa, plate_name), factor_guide(fa, plate_name)
    estimate = log_likelihood(model, guide, x, num_particles=3)
    assert near(estimate.log_likelihood, fa.log_marginal(x))
    for name in ("iwae", "iwae-stl", "iwae-dreg"):
        assert make_objective(name, 4).loss(model, guide, x) == pytest.approx(-fa.log_marginal(x).sum().item())


def test_a_conditional_model_takes_labels_split_with_the_images():
    # x | z, y = N(W z + U y + b, sigma^2): p(x | y) = N(U y + b, W W^T + sigma^2 I)
    fa = Factor()
    U = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    x, y = fa.data(11), nn.functional.one_hot(torch.arange(11) % 3).to(F64)

    def model(x, y, temperature=1.0):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), temperature).to_event(1))
            pyro.sample("x", dist.Normal(z @ fa.W.T + y @ U + fa.b, fa.sigma).to_event(1), obs=x)

    def guide(x, y, temperature=1.0):
        loc, scale_tril = fa.posterior(x - y @ U)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))

    estimate = log_likelihood(model, guide, x, y, num_particles=5, batch_size=4, temperature=1.0)
    assert estimate.log_likelihood.shape == (11,)
    assert near(estimate.log_likelihood, fa.log_marginal(x - y @ U))
    with pytest.raises(TypeError, match="by keyword"):
        log_likelihood(model, guide, x, 5000)
    with pytest.raises(ValueError, match="different numbers of rows"):
        log_likelihood(model, guide, x, y[:5], num_particles=5)
    with pytest.raises(ValueError, match="keyword argument y= has a row for each of the 11 data points"):
        log_likelihood(model, guide, x, y=y, num_particles=5, batch_size=4)
    with pytest.raises(TypeError, match=r"takes the data positionally.* got none \(keyword arguments \['x', 'y'\]\)"):
        log_likelihood(model, guide, x=x, y=y, num_particles=5)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("num_particles", 0),
        ("num_particles", 2.5),
        ("num_particles", True),
        ("batch_size", 0),
        ("particle_chunk_size", -5),
    ],
)
def test_a_count_that_is_not_a_whole_number_of_at_least_one_is_refused_by_name(argument, value):
    fa = Factor()
    x = fa.data(5)
    message = f"{argument} must be a whole number of at least 1, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        log_likelihood(factor_model(fa), factor_guide(fa), x, **{"num_particles": 3, argument: value})
    if argument == "num_particles":
        for make in (lambda: make_objective("iwae", value), lambda: IWAE_ELBO(num_particles=value)):
            with pytest.raises(ValueError, match=re.escape(message)):
                make()


def test_no_data_points_give_no_estimates():
    fa = Factor()
    estimate = log_likelihood(factor_model(fa), factor_guide(fa), fa.data(5)[:0], num_particles=3)
    assert estimate.log_likelihood.shape == estimate.elbo.shape == (0,)


@pytest.mark.parametrize("objective", [None, "iwae", "iwae-stl", "elbo"])
def test_a_global_latent_that_the_particle_plate_breaks_is_refused_by_name(objective):
    # a weight matrix outside the data plate: in a particle plate it is [k, D, d], which F.linear cannot take,
    # so the draw fails before the weights could refuse it; one draw without the particle plate names it
    fa = Factor()
    x = fa.data(6)

    def model(x):
        W = pyro.sample("W", dist.Normal(fa.W, 1.0).to_event(2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(nn.functional.linear(z, W, fa.b), fa.sigma).to_event(1), obs=x)

    guide = factor_guide(fa)
    with pytest.raises(DataPlateError, match="model site 'W' is outside pyro.plate") as refusal:
        if objective is None:
            log_likelihood(model, guide, x, num_particles=4)
        else:
            make_objective(objective, 4).loss_and_grads(model, guide, x)
    assert isinstance(refusal.value.__cause__, RuntimeError)  # the shape error, kept as the cause


def test_a_plate_named_apart_in_the_guide_is_refused_by_its_name():
    fa = Factor()
    x = fa.data(7)
    message = r"guide site 'z' is in pyro.plate\('batch'\), and the observations in pyro.plate\('data'\).*same name"
    with pytest.raises(DataPlateError, match=message):
        log_likelihood(factor_model(fa, "data"), factor_guide(fa, "batch"), x, num_particles=3)


def test_an_observation_outside_the_data_plate_is_named():
    fa = Factor()
    x = fa.data(7)

    def model(x):
        factor_model(fa)(x)
        pyro.factor("penalty", x.new_zeros(()))  # a term of the whole batch

    message = r"the observed sites share no pyro.plate \(model site 'x' in \['data'\]; model site 'penalty' in no plate"
    for score in (
        lambda: log_likelihood(model, factor_guide(fa), x, num_particles=3),
        lambda: make_objective("iwae", 3).loss(model, factor_guide(fa), x),
    ):
        with pytest.raises(DataPlateError, match=message):
            score()


def test_a_sequential_data_plate_is_named():
    def model(x):
        for i in pyro.plate("data", x.shape[0]):  # a site per data point, no batch dimension
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i])

    def guide(x):
        for i in pyro.plate("data", x.shape[0]):
            pyro.sample(f"z_{i}", dist.Normal(x[i] / 2, 0.5**0.5))

    x = torch.randn(4)
    message = r"model site 'x_0' is in the sequential plate 'data'.*`with pyro.plate\('data', len\(x\)\):`"
    for score in (
        lambda: log_likelihood(model, guide, x, num_particles=3),
        lambda: make_objective("iwae", 3).loss(model, guide, x),
    ):
        with pytest.raises(DataPlateError, match=message):
            score()


def sequential_steps_model(global_latent):
    """x[n, t] ~ N(z_t, 1), z_t ~ N(g, 1), a sequential plate over t inside the data plate; g global or 0."""

    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0)) if global_latent else 0.0
        with pyro.plate("data", x.shape[0]):
            for t in pyro.plate("steps", x.shape[1]):
                z = pyro.sample(f"z_{t}", dist.Normal(g, 1.0))
                pyro.sample(f"x_{t}", dist.Normal(z, 1.0), obs=x[:, t])

    return model


def test_a_sequential_plate_inside_the_data_plate_is_accepted():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            for t in pyro.plate("steps", x.shape[1]):
                pyro.sample(f"z_{t}", dist.Normal(x[:, t] / 2, 0.5**0.5))  # the exact posterior

    x = torch.randn(4, 3)
    estimate = log_likelihood(sequential_steps_model(False), guide, x, num_particles=3).log_likelihood
    torch.testing.assert_close(estimate, Normal(0.0, 2**0.5).log_prob(x).sum(-1))
    # a global latent beside it is named as such, not blamed on the sequential plate
    with pytest.raises(DataPlateError, match="model site 'g' is outside pyro.plate\\('data'\\)"):
        log_likelihood(sequential_steps_model(True), guide, x, num_particles=3)


# ----------------------------------------------------------------------------------------------------------------------
# plates nested in the data plate, with Pyro's automatic dims and with hand-set ones


def test_a_plate_nested_inside_the_data_plate_needs_no_hand_set_dims():
    # automatic dims: "data" is dim -1, "features" dim -2, so x enters transposed ([features, data])
    fa = Factor(latent_dim=1)
    x = fa.data(9)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            with pyro.plate("features", x.shape[1]):
                pyro.sample("x", dist.Normal(fa.W[:, :1] * z + fa.b[:, None], fa.sigma), obs=x.T)

    def guide(x):
        loc, scale_tril = fa.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc[:, 0], scale_tril[:, 0, 0]))

    estimate = log_likelihood(model, guide, x, num_particles=6, batch_size=4)
    assert near(estimate.log_likelihood, fa.log_marginal(x))
    for name in ("iwae", "iwae-stl", "iwae-dreg"):
        assert make_objective(name, 3).loss(model, guide, x) == pytest.approx(-fa.log_marginal(x).sum().item())


@pytest.mark.parametrize("keepdim", [True, False])
def test_a_batch_dim_that_none_of_the_sites_plates_declares_is_refused(keepdim):
    # z_dn ~ N(0, 1) in a feature plate nested in the data plate, x_nd | z ~ N(z_dn, 1) as a factor in the data
    # plate alone, summed over the features: without keepdim the factor is [k, N] under the particle plate at
    # dim -3, k at the feature dim, which Pyro lets pass and a sum over that dim would mix the particles
    # (once: log p(x) 55 nats too low over these 5 points, silently); with keepdim it is [k, 1, N], exact
    # under the exact posterior
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("features", x.shape[1], dim=-2):
                z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.factor("x", dist.Normal(z, 1.0).log_prob(x.T).sum(-2, keepdim=keepdim))

    def guide(x):
        with pyro.plate("data", x.shape[0]), pyro.plate("features", x.shape[1], dim=-2):
            pyro.sample("z", dist.Normal(x.T / 2, math.sqrt(0.5)))

    if keepdim:
        exact = Normal(x.new_zeros(()), math.sqrt(2.0)).log_prob(x).sum(-1)
        assert near(log_likelihood(model, guide, x, num_particles=4, batch_size=3).log_likelihood, exact)
        assert near(-make_objective("iwae", 4).loss(model, guide, x), exact.sum().item())

        # right of every plate of a site no particle dim lands: there Pyro's wildcard dims are summed, as Pyro
        # does (the data plate at dim -2, the features at dim -1 in no plate)
        def trailing_features(x):
            with pyro.plate("data", x.shape[0], dim=-2):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

        def trailing_guide(x):
            with pyro.plate("data", x.shape[0], dim=-2):
                pyro.sample("z", dist.Normal(x.sum(-1, keepdim=True) / 4, 0.5))

        exact = MultivariateNormal(x.new_zeros(3), torch.eye(3, dtype=F64) + 1).log_prob(x)
        assert near(log_likelihood(trailing_features, trailing_guide, x, num_particles=4).log_likelihood, exact)
        return
    message = r"site 'x' has size 4 at dim -2 of its batch shape \(4, 4, 5\), a dim that none of its plates declares"
    with pytest.raises(DataPlateError, match=message):
        log_likelihood(model, guide, x, num_particles=4, batch_size=5)
    with pytest.raises(DataPlateError, match=message):
        make_objective("iwae", 4).loss(model, guide, x)


@pytest.mark.parametrize("data_first", [True, False])
def test_two_plates_around_every_site_are_refused_as_ambiguous(data_first):
    # z_nd ~ N(0, 1), x_nd | z_nd ~ N(z_nd, s^2), every site in a data plate and a feature plate: either could
    # index the data points (the order of `with` and the dims do not say which), so it is refused; with the
    # features in the event, each weight is p(x_n) under the exact posterior, whatever the batch
    num_data, num_features, s = 6, 3, 0.5
    x = torch.randn(num_data, num_features, generator=torch.Generator().manual_seed(0), dtype=F64)
    v = 1 / (1 + s**-2)  # the posterior of z_nd: N(v x_nd / s^2, v)

    def plates(x):
        data, features = pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", num_features, dim=-1)
        return (data, features) if data_first else (features, data)

    def model(x):
        first, second = plates(x)
        with first, second:
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, s), obs=x)

    def guide(x):
        first, second = plates(x)
        with first, second:
            pyro.sample("z", dist.Normal(v * x / s**2, math.sqrt(v)))

    message = r"the plates .*'data' \(dim -2\).* each hold every sample site .* ambiguous"
    with pytest.raises(DataPlateError, match=message):
        log_likelihood(model, guide, x, num_particles=4, batch_size=3)
    with pytest.raises(DataPlateError, match=message):
        make_objective("iwae", 4).loss(model, guide, x)

    def model_with_events(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(num_features), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    def guide_with_events(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(v * x / s**2, math.sqrt(v)).to_event(1))

    exact = Normal(x.new_zeros(()), math.sqrt(1 + s**2)).log_prob(x).sum(-1)
    estimate = log_likelihood(model_with_events, guide_with_events, x, num_particles=4, batch_size=3)
    assert near(estimate.log_likelihood, exact)


def test_a_point_mass_guide_is_refused():
    fa = Factor(latent_dim=1)
    x = fa.data(8)
    model = factor_model(fa)

    def delta_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(fa.posterior(x)[0]).to_event(1))

    pyro.clear_param_store()
    for guide in (delta_guide, AutoDelta(model)):
        with pytest.raises(DataPlateError, match="guide site 'z' is a point mass"):
            log_likelihood(model, guide, x, num_particles=3)
        with pytest.raises(DataPlateError, match="guide site 'z' is a point mass"):
            make_objective("iwae", 3).loss(model, guide, x)

    # AutoNormal's Delta at a constrained site is a transform of an auxiliary site with a density: scored
    def positive_model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    counts = torch.tensor([0.0, 1.0, 4.0, 2.0])
    pyro.clear_param_store()
    estimate = log_likelihood(
        positive_model, AutoNormal(positive_model, init_scale=1.0), counts, num_particles=20000, seed=0
    )
    # the marginal of a Gamma(2, 1) Poisson mixture: negative binomial with r = 2, p = 1/2
    exact = dist.NegativeBinomial(2.0, probs=torch.tensor(0.5)).log_prob(counts)
    assert torch.allclose(estimate.log_likelihood, exact, atol=0.05)

    # but another site's auxiliary does not stand for a point mass: AutoNormal for one latent, AutoDelta for
    # the other (once any auxiliary site exempted every Delta: 2 nats off, silently)
    def two_latents(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z1 + z2, 1.0), obs=x)

    mixed = AutoGuideList(two_latents)
    mixed.append(AutoNormal(poutine.block(two_latents, hide=["z2"])))
    mixed.append(AutoDelta(poutine.block(two_latents, expose=["z2"])))
    with pytest.raises(DataPlateError, match="guide site 'z2' is a point mass"):
        log_likelihood(two_latents, mixed, counts, num_particles=3)


# ----------------------------------------------------------------------------------------------------------------------
# latents that the model samples and the guide lacks; obs_mask


def test_a_model_only_latent_cancels_from_the_weight():
    fa = Factor()
    x = fa.data(6)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("u", dist.Normal(x.new_zeros(3), 2.0).to_event(1))  # the guide has no "u"
            pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, fa.sigma).to_event(1), obs=x)

    guide = factor_guide(fa)
    estimate = log_likelihood(model, guide, x, num_particles=20)
    assert near(estimate.log_likelihood, fa.log_marginal(x))  # not log p(x) + log p(u)
    assert make_objective("iwae", 4).loss(model, guide, x) == pytest.approx(-fa.log_marginal(x).sum().item())
    with pytest.raises(DataPlateError, match="'u' is a latent that the guide does not sample"):
        make_objective("elbo", 1).loss(model, guide, x)


@pytest.mark.filterwarnings("ignore:Found non-auxiliary vars in guide but not model")
@pytest.mark.parametrize("extra", ["w", "x"])
def test_a_guide_site_that_is_not_a_latent_of_the_model_is_refused(extra):
    """An extra guide variable, or one the model observes: log q of it would enter the weight with no p to match."""
    fa = Factor()
    x = fa.data(6)
    model = factor_model(fa)

    def guide(x):
        loc, scale_tril = fa.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))
            pyro.sample(extra, dist.Normal(x.new_zeros(4), 1.0).to_event(1))

    message = f"guide site '{extra}' is not a latent of the model"
    with pytest.raises(DataPlateError, match=message):
        log_likelihood(model, guide, x, num_particles=4)
    for name in ("elbo", "iwae", "iwae-dreg"):
        with pytest.raises(DataPlateError, match=message):
            make_objective(name, 4).loss(model, guide, x)


def test_a_model_only_latent_that_the_likelihood_uses_converges_to_the_marginal():
    # x = W z + c u + noise with u ~ N(0, 1) proposed by the model: p(x) = N(b, W W^T + c c^T + sigma^2 I)
    fa = Factor()
    c = torch.tensor([0.5, -0.3, 0.2, 0.4], dtype=F64)
    x = fa.data(4)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            u = pyro.sample("u", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z @ fa.W.T + u[..., None] * c + fa.b, fa.sigma).to_event(1), obs=x)

    pyro.set_rng_seed(0)
    estimate = log_likelihood(model, factor_guide(fa), x, num_particles=20000)
    covariance = fa.W @ fa.W.T + torch.outer(c, c) + fa.sigma**2 * torch.eye(4, dtype=F64)
    exact = MultivariateNormal(fa.b, covariance).log_prob(x)
    assert near(estimate.log_likelihood, exact, tol=0.06)
    wrong = exact + Normal(0.0, 1.0).entropy().neg()  # what counting log p(u) would converge to
    assert not near(estimate.log_likelihood, wrong, tol=0.5)


def masked_factor(fa, observed):
    """x with obs_mask, in a features plate so that a row can be partly observed."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1, 2), 1.0).to_event(1))
            with pyro.plate("features", x.shape[1], dim=-1):
                loc = (z @ fa.W.T).squeeze(-2) + fa.b
                pyro.sample("x", dist.Normal(loc, fa.sigma), obs=x, obs_mask=observed)

    def guide(x):
        loc, scale_tril = fa.posterior(x, observed)
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.MultivariateNormal(loc[:, None], scale_tril=scale_tril[:, None]))

    return model, guide


def test_obs_mask_scores_the_observed_part_of_each_row():
    fa = Factor()
    x = fa.data(4)
    observed = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    model, guide = masked_factor(fa, observed)
    estimate = log_likelihood(model, guide, x, num_particles=7)
    expected = fa.log_marginal(x, observed)
    assert near(estimate.log_likelihood, expected)
    assert estimate.log_likelihood[3] == 0  # a fully masked row
    # training: the unobserved values are proposed by the model, reparameterized, so iwae takes them
    assert make_objective("iwae", 3).loss(model, guide, x) == pytest.approx(-expected.sum().item())
    with pytest.raises(DataPlateError, match="'x_unobserved'"):
        make_objective("elbo", 1).loss(model, guide, x)


def test_a_guide_that_proposes_the_masked_values_everywhere_is_scored_where_the_model_uses_them():
    # AutoNormal proposes obs_mask's x_unobserved at every entry, observed ones included, where the model
    # masks it: those values are not in the model, so their density leaves the weight as the model's does
    # (once it stayed: the guide's leftover draws were scored as if they were proposals for the model).
    # Here they are drawn from p(x | z), so with z from its exact posterior every weight is p(x_observed).
    fa = Factor()
    x = fa.data(4)
    observed = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    model, _ = masked_factor(fa, observed)

    def guide(x):
        loc, scale_tril = fa.posterior(x, observed)
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.MultivariateNormal(loc[:, None], scale_tril=scale_tril[:, None]))
            with pyro.plate("features", x.shape[1], dim=-1):
                pyro.sample("x_unobserved", dist.Normal((z @ fa.W.T).squeeze(-2) + fa.b, fa.sigma))

    expected = fa.log_marginal(x, observed)
    assert near(log_likelihood(model, guide, x, num_particles=7).log_likelihood, expected)
    assert make_objective("iwae", 3).loss(model, guide, x) == pytest.approx(-expected.sum().item())
    # AutoNormal, untrained, with its auxiliary x_unobserved_unconstrained: a lower bound, within 0.35 nats at
    # 20,000 particles (once 2.3 to 7.8 nats *above* log p(x) in the partly observed rows)
    pyro.clear_param_store()
    guide = AutoNormal(model, init_scale=1.0)
    estimate = log_likelihood(model, guide, x, num_particles=20000, seed=0).log_likelihood
    assert (estimate < expected + 0.01).all() and (estimate > expected - 0.5).all(), (estimate, expected)


# ----------------------------------------------------------------------------------------------------------------------
# subsampled data plates: the scale multiplies the bound after the logsumexp


def subsample_size_model(fa):
    """Pyro's mini-batch idiom: the model draws its own subsample of the data set it is given."""

    def model(data, subsample_size=None):
        with pyro.plate("data", data.shape[0], subsample_size=subsample_size) as index:
            z = pyro.sample("z", dist.Normal(data.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, fa.sigma).to_event(1), obs=data[index])

    return model


@pytest.mark.parametrize("how", ["subsample", "poutine.scale"])
def test_a_subsampled_plate_scales_the_bound_after_the_logsumexp(how):
    fa = Factor()
    data = fa.data(30)
    index = torch.tensor([3, 17, 4, 29, 0])
    num_data = 30

    @contextlib.contextmanager
    def create_plate(x, index):
        if how == "subsample":
            with pyro.plate("data", num_data, subsample=index):
                yield
        else:
            with poutine.scale(scale=num_data / x.shape[0]), pyro.plate("data", x.shape[0]):
                yield

    def model(x, index):
        with create_plate(x, index):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, fa.sigma).to_event(1), obs=x)

    def guide(x, index, shift=0.0):  # the exact posterior, its mean moved by shift
        loc, scale_tril = fa.posterior(x)
        with create_plate(x, index):
            pyro.sample("z", dist.MultivariateNormal(loc + shift, scale_tril=scale_tril))

    x = data[index]
    exact = fa.log_marginal(x)
    # at the exact posterior every log w_il is log p(x_i); moved from it, the weights differ, so that scaling
    # before the logsumexp (Pyro's RenyiELBO) gives another number
    loc, scale_tril = fa.posterior(x)
    traced = poutine.trace(lambda x, index: guide(x, index, shift=0.5))
    for name, options in (("iwae", {}), ("iwae-stl", {}), ("iwae-dreg", {}), ("piwae", {"num_groups": 2})):
        objective = make_objective(name, 4, **options)
        assert objective.loss(model, guide, x, index) == pytest.approx(-6 * exact.sum().item())
        loss = objective.loss(model, traced, x, index)
        z = traced.msngr.trace.nodes["z"]["value"]  # [particles, 5, 2]
        log_weights = (
            Normal(0.0, 1.0).log_prob(z).sum(-1)
            + Normal(z @ fa.W.T + fa.b, fa.sigma).log_prob(x).sum(-1)
            - MultivariateNormal(loc + 0.5, scale_tril=scale_tril).log_prob(z)
        )
        num_particles = log_weights.shape[0]
        assert loss == pytest.approx(-6 * (log_weights.logsumexp(0) - math.log(num_particles)).sum().item(), rel=1e-9)
        scaled_before = -((6 * log_weights).logsumexp(0) - math.log(num_particles)).sum().item()
        assert abs(loss - scaled_before) > 1.0, name  # the test tells the two apart
    # the evaluator's estimates are per data point: the scale never enters
    assert near(log_likelihood(model, guide, x, index, num_particles=3).log_likelihood, exact)


def test_the_subsampled_loss_and_gradient_match_a_hand_computation_on_replayed_samples():
    # AutoNormal over the local latents of a subsample_size plate; pyro's RenyiELBO would scale before the logsumexp
    fa = Factor()
    data = fa.data(40)
    model = subsample_size_model(fa)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model, init_scale=0.5)
    guide(data, subsample_size=8)  # create the parameters
    traced = poutine.trace(guide)
    loss = make_objective("iwae", 5).loss_and_grads(model, traced, data, subsample_size=8)
    trace = traced.msngr.trace
    index, z = trace.nodes["data"]["value"], trace.nodes["z"]["value"].detach()  # [8], [5, 8, 2]
    parameters = dict(guide.named_parameters())  # the locs and the unconstrained scales
    grads = {name: p.grad.clone() for name, p in parameters.items()}
    guide.zero_grad()
    loc, scale = guide.locs.z, guide.scales.z

    eps = (z - loc[index].detach()) / scale[index].detach()
    z = loc[index] + scale[index] * eps
    x = data[index]
    log_weights = (
        Normal(0.0, 1.0).log_prob(z).sum(-1)
        + Normal(z @ fa.W.T + fa.b, fa.sigma).log_prob(x).sum(-1)
        - Normal(loc[index], scale[index]).log_prob(z).sum(-1)
    )
    expected = -(40 / 8) * (log_weights.logsumexp(0) - math.log(5)).sum()
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-9)
    assert all(torch.allclose(grads[name], p.grad, atol=1e-9) for name, p in parameters.items())
    renyi = -(40 / 8 * log_weights.detach()).logsumexp(0).sub(math.log(5)).sum()
    assert abs(renyi.item() - expected.item()) > 1.0  # the test tells the two apart


def test_autonormal_trained_with_subsample_size_approaches_the_exact_posterior():
    fa = Factor()
    data = fa.data(40)
    model = subsample_size_model(fa)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # the guide's plate follows the model's subsample_size (Pyro's idiom for subsampled autoguides)
    guide = AutoNormal(
        model,
        init_scale=0.1,
        create_plates=lambda data, subsample_size=None: pyro.plate(
            "data", data.shape[0], subsample_size=subsample_size
        ),
    )
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), make_objective("iwae", 4))
    for _ in range(1500):
        svi.step(data, subsample_size=8)
    loc, _ = fa.posterior(data)
    assert (guide.locs.z - loc).abs().mean() < 0.2 < 0.5 < loc.abs().mean()  # from 0, most of the way
    # scored on every data point at once (no subsampling): within Monte-Carlo error of log p(x)
    estimate = log_likelihood(model, guide, data, num_particles=2000, batch_size=40).log_likelihood
    assert abs(estimate.mean() - fa.log_marginal(data).mean()) < 0.03
    # in batches of fewer rows its 40 parameters do not fit: said so, with the fix (was Pyro's shape error)
    message = "AutoNormal failed on a batch of 16 of the 40 rows. An autoguide keeps a parameter per data point"
    for validation in (True, False):  # Pyro's "Shape mismatch", or torch's own error unvalidated
        with pyro.validation_enabled(validation), pytest.raises(DataPlateError, match=message + ".*batch_size=40"):
            log_likelihood(model, guide, data, num_particles=4, batch_size=16)


def test_autonormalmessenger_scores_in_batches_through_a_subsampling_plate():
    # z_n ~ N(0, 1), x_n ~ N(z_n, 1): p(z_n | x_n) = N(x_n / 2, 1 / 2), log p(x_n) = log N(x_n; 0, 2)
    x = torch.linspace(-2.0, 3.0, 10, dtype=F64)
    indices = torch.arange(10)

    def subsampled_model(x, indices):
        with pyro.plate("data", 10, subsample=indices):
            z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def whole_model(x, indices):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    refusal = "AutoNormalMessenger failed on a batch of 4 of the 10.*subsample"
    for model in (subsampled_model, whole_model):
        pyro.clear_param_store()
        guide = AutoNormalMessenger(model)
        guide(x, indices)  # its parameters, one per data point, set to the exact posterior's
        guide.locs.z = PyroParam(x / 2, event_dim=0)  # event_dim: sliced by the plate's indices
        guide.scales.z = PyroParam(
            torch.full((10,), 0.5**0.5, dtype=F64), event_dim=0, constraint=constraints.softplus_positive
        )
        if model is subsampled_model:  # every weight is p(x): exact with any K, in any batches
            estimate = log_likelihood(model, guide, x, indices, num_particles=3, batch_size=4).log_likelihood
            torch.testing.assert_close(estimate, Normal(0.0, 2**0.5).log_prob(x))
        else:  # 10 parameters, a batch of 4: said so, with the fix (was Pyro's shape error, or torch's unvalidated)
            for validation in (True, False):
                with pyro.validation_enabled(validation), pytest.raises(DataPlateError, match=refusal):
                    log_likelihood(model, guide, x, indices, num_particles=3, batch_size=4)


def test_the_evaluator_refuses_a_plate_that_does_not_cover_the_batch():
    fa = Factor()
    data = fa.data(40)
    model = subsample_size_model(fa)
    pyro.clear_param_store()
    with pytest.raises(DataPlateError, match="8 data points in a batch of 40"):
        log_likelihood(model, AutoNormal(model), data, num_particles=4, batch_size=40, subsample_size=8)


def test_a_data_plate_sized_for_the_whole_data_set_is_told_to_take_its_size_from_the_batch():
    fa = Factor()
    data = fa.data(12)

    def model(x):
        with pyro.plate("data", 12):  # the data set's size, written in: fine at batch_size=12 only
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, fa.sigma).to_event(1), obs=x)

    def guide_of_the_same_size(x):
        loc, scale_tril = fa.posterior(x)
        with pyro.plate("data", 12):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))

    guide = factor_guide(fa)  # the exact posterior, in a plate sized from the batch
    for exact_guide in (guide, guide_of_the_same_size):
        whole = log_likelihood(model, exact_guide, data, num_particles=3, batch_size=12).log_likelihood
        assert near(whole, fa.log_marginal(data))
    # in batches: the plates of both sized 12 fail on 5 rows (Pyro's "not broadcastable", or torch's own
    # error unvalidated), and both are named
    plates = "the model's pyro.plate\\('data', 12\\) and the guide's pyro.plate\\('data', 12\\)"
    message = plates + " hold 12 data points, all the rows, but are given a batch of 5.*batch_size=12"
    for validation in (True, False):
        with pyro.validation_enabled(validation), pytest.raises(DataPlateError, match=message):
            log_likelihood(model, guide_of_the_same_size, data, num_particles=3, batch_size=5)
    # the guide's plate sized 5 from the batch: Pyro would make the model's a subsample of 5 of 12
    message = "data plates have different sizes \\(guide site 'z': 5 data points, other sites: 12\\)"
    with pytest.raises(DataPlateError, match=message):
        log_likelihood(model, guide, data, num_particles=3, batch_size=5)


def test_an_error_that_batches_do_not_cause_is_not_blamed_on_the_data_plate():
    fa = Factor()
    data = fa.data(4)

    def model(x):  # a bug of the model's own: 4 latent dims, as many as data points, where the guide draws 2
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(4), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, fa.sigma).to_event(1), obs=x)

    with pytest.raises(Exception) as raised:
        log_likelihood(model, factor_guide(fa), data, num_particles=3, batch_size=2)
    assert not isinstance(raised.value, DataPlateError), raised.value
    # tempering the whole model (twice its log-density) is a scale, not a subsample: not blamed on plate sizes
    with pytest.raises(DataPlateError, match="different scales") as refused:
        log_likelihood(poutine.scale(factor_model(fa), 2.0), factor_guide(fa), data, num_particles=3, batch_size=2)
    assert "size" not in str(refused.value)  # no plate of another size named


# ----------------------------------------------------------------------------------------------------------------------
# discrete latents: exact by enumeration, and an unbiased gradient


MIXTURE_LOCS = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
MIXTURE_LOG_WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=F64).log()


def mixture_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(logits=MIXTURE_LOG_WEIGHTS))
        pyro.sample("x", dist.Normal(MIXTURE_LOCS[c], 1.0), obs=x)


def mixture_joint(x):
    """``[N, 3]`` log p(x, c) for every c."""
    return MIXTURE_LOG_WEIGHTS + Normal(MIXTURE_LOCS, 1.0).log_prob(x[:, None])


def test_a_discrete_mixture_is_exact_by_enumeration():
    x = torch.tensor([-2.5, 0.0, 1.7, 4.0], dtype=F64)

    def posterior_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=mixture_joint(x)))

    def uniform_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=torch.zeros(x.shape[0], 3, dtype=F64)))

    exact = mixture_joint(x).logsumexp(-1)
    assert near(log_likelihood(mixture_model, posterior_guide, x, num_particles=5).log_likelihood, exact)
    pyro.set_rng_seed(0)
    estimate = log_likelihood(mixture_model, uniform_guide, x, num_particles=20000)
    assert near(estimate.log_likelihood, exact, tol=0.03)


def test_the_iwae_gradient_with_a_discrete_guide_is_unbiased():
    # E[grad] of L_2 over the guide's logits, by enumerating all 3 x 3 pairs of particles
    x = torch.tensor([-1.0, 2.0], dtype=F64)
    k = 2
    logits = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, 0.0]], dtype=F64, requires_grad=True)
    log_q = logits.log_softmax(-1)
    log_w = mixture_joint(x) - log_q  # [N, 3]
    pairs = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # [9, 2]
    bound = 0.0
    for i in range(2):
        log_mean = log_w[i, pairs].logsumexp(-1) - math.log(k)
        bound = bound + (log_q[i, pairs].sum(-1).exp() * log_mean).sum()
    (exact,) = torch.autograd.grad(-bound, logits)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=pyro.param("logits", logits.detach().clone())))

    # a zero gradient (RenyiELBO's at alpha = 0) would fail
    assert_unbiased_logits_gradient(mixture_model, guide, x, k, exact)


def assert_unbiased_logits_gradient(model, guide, x, k, exact, draws=3000):
    """The mean of ``draws`` IWAE gradients of ``pyro.param("logits")`` is ``exact`` within 4.5 standard errors."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    objective = make_objective("iwae", k)
    estimates = []
    for _ in range(draws):
        objective.loss_and_grads(model, guide, x)
        estimates.append(pyro.param("logits").grad.clone())
        pyro.param("logits").grad = None
    estimates = torch.stack(estimates)
    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert ((mean - exact).abs() < 4.5 * stderr + 1e-12).all()
    assert (exact.abs() > 10 * stderr).any()  # the test tells a zero gradient apart


@pytest.mark.filterwarnings("ignore:Found vars in model but not guide")
def test_the_iwae_gradient_of_a_discrete_latent_only_the_model_samples_is_unbiased():
    """
    The model proposes c from its own p(c) (the guide lacks it), so p(c) cancels from the weight and its logits
    reach L_2 only through the sampling: a score-function term. E[grad] by enumerating all 3 x 3 pairs.
    """
    x = torch.tensor([-1.0, 2.0], dtype=F64)
    k = 2
    logits = torch.tensor([0.3, -0.2, 0.1], dtype=F64, requires_grad=True)
    log_p_c = logits.log_softmax(-1)
    log_w = Normal(MIXTURE_LOCS, 1.0).log_prob(x[:, None])  # [N, 3]: p(x | c), p(c) cancelled
    pairs = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # [9, 2]
    bound = sum((log_p_c[pairs].sum(-1).exp() * (log_w[i, pairs].logsumexp(-1) - math.log(k))).sum() for i in range(2))
    (exact,) = torch.autograd.grad(-bound, logits)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=pyro.param("logits", logits.detach().clone())))
            pyro.sample("x", dist.Normal(MIXTURE_LOCS[c], 1.0), obs=x)

    def guide(x):
        pass

    # without the score-function term the gradient would be 0
    assert_unbiased_logits_gradient(model, guide, x, k, exact)


# ----------------------------------------------------------------------------------------------------------------------
# integer data, guides without parameters, evaluate then train, guides that couple data points


def test_integer_counts_under_a_poisson_likelihood():
    # lambda ~ Gamma(a, b), x ~ Poisson(lambda): p(x) is negative binomial, the posterior Gamma(a + x, b + 1)
    a, b = 2.0, 0.5
    x = torch.tensor([0, 3, 7, 1, 12])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(torch.tensor(a, dtype=F64), b))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("rate", dist.Gamma(a + x.to(F64), b + 1.0))

    estimate = log_likelihood(model, guide, x, num_particles=9, batch_size=2)
    xf = x.to(F64)
    exact = (
        torch.lgamma(a + xf) - math.lgamma(a) - torch.lgamma(xf + 1) + a * math.log(b / (b + 1)) - xf * math.log(b + 1)
    )
    assert estimate.log_likelihood.dtype == F64
    assert near(estimate.log_likelihood, exact, tol=1e-5)  # torch's Poisson takes lgamma of the counts in float32


def test_stl_and_dreg_train_the_model_under_a_fixed_proposal():
    torch.manual_seed(0)
    decoder = nn.Linear(2, 5)
    x = torch.randn(6, 5)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):  # the prior as a fixed proposal: nothing to train
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    gradients = {}
    for name in ("iwae", "iwae-stl", "iwae-dreg"):
        decoder.zero_grad()
        pyro.set_rng_seed(1)
        gradients[name] = make_objective(name, 8).loss_and_grads(model, guide, x), decoder.weight.grad.clone()
    for name in ("iwae-stl", "iwae-dreg"):
        assert gradients[name][0] == pytest.approx(gradients["iwae"][0], rel=1e-6)
        assert torch.allclose(gradients[name][1], gradients["iwae"][1], atol=1e-5)
    assert gradients["iwae"][1].abs().max() > 1e-3


def test_evaluate_an_untrained_model_then_train_it():
    fa = Factor()
    data = fa.data(10).float()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ fa.W.T.float() + fa.b.float(), fa.sigma).to_event(1), obs=x)

    pyro.clear_param_store()
    guide = AutoNormal(model)
    log_likelihood(model, guide, data, num_particles=10)  # creates the guide's parameters
    before = pyro.param("AutoNormal.locs.z").detach().clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), make_objective("iwae", 3))
    svi.step(data)
    assert not torch.equal(pyro.param("AutoNormal.locs.z").detach(), before)


def test_the_elbo_objective_takes_autonormal_as_pyros_trace_elbo_does():
    # AutoNormal's auxiliary sites are not the model's latents; Trace_ELBO counts them, and so must we
    fa = Factor()
    data = fa.data(10)
    model = factor_model(fa)
    pyro.clear_param_store()
    guide = AutoNormal(model, init_scale=0.3)
    guide(data)  # set up its parameters, outside the seeded draws
    losses = []
    pyro_elbo = pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    for objective in (pyro_elbo, make_objective("elbo", 3, max_plate_nesting=1)):
        pyro.set_rng_seed(2)
        losses.append(objective.loss(model, guide, data))
    assert losses[1] == losses[0]


@pytest.mark.parametrize("autoguide", [AutoMultivariateNormal, AutoDiagonalNormal])
def test_a_guide_that_couples_data_points_is_refused_by_name(autoguide):
    fa = Factor()
    data = fa.data(10).float()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ fa.W.T.float(), 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    guide = autoguide(model)
    message = f"guide site '_{autoguide.__name__}_latent'.*AutoNormal"
    with pytest.raises(DataPlateError, match=message):
        log_likelihood(model, guide, data, num_particles=4)
    with pytest.raises(DataPlateError, match=message):
        make_objective("iwae", 4).loss(model, guide, data)


def test_a_guide_without_the_data_plate_is_told_to_add_it():
    # Pyro's Trace_ELBO takes a guide whose batched site has no plate; the weights need it per data point
    fa = Factor()
    x = fa.data(5)
    model = factor_model(fa)

    def guide(x):
        loc, scale_tril = fa.posterior(x)
        pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))

    message = r"guide site 'z' is outside pyro.plate\('data'\).*inside `with pyro.plate\('data', ...\):`"
    with pytest.raises(DataPlateError, match=message):
        log_likelihood(model, guide, x, num_particles=3)


def test_an_effect_based_guide_is_scored_from_its_own_traces():
    # a GuideMessenger (AutoNormalMessenger's kind) runs the model inside itself: traced as a function, its
    # trace held the observations and was refused as "guide site 'x' is not a latent". Its own traces, as
    # Pyro's ELBOs take them: here with the exact posterior N(x/2, 1/2) of z ~ N(0, 1), x | z ~ N(z, 1),
    # every weight is p(x) = N(x; 0, 2)
    x = torch.randn(5, generator=torch.Generator().manual_seed(0), dtype=F64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    class ExactPosterior(GuideMessenger):
        def get_posterior(self, name, prior):
            (x,), _ = self.args_kwargs
            return dist.Normal(x / 2, math.sqrt(0.5))

    guide = ExactPosterior(model)
    exact = Normal(x.new_zeros(()), math.sqrt(2.0)).log_prob(x)
    assert near(log_likelihood(model, guide, x, num_particles=4, batch_size=2).log_likelihood, exact)
    assert near(-make_objective("iwae", 4).loss(model, guide, x), exact.sum().item())
    with pytest.raises(ValueError, match="runs its own model inside itself, not the model given"):
        log_likelihood(lambda x: model(x), guide, x, num_particles=4)
    for objective in ("iwae-stl", "iwae-dreg"):  # they run the guide again at fixed samples: it cannot
        with pytest.raises(ValueError, match="effect-based guide .* use AutoNormal"):
            make_objective(objective, 4).loss_and_grads(model, guide, x)


def test_particle_chunks_are_sized_from_the_rows_in_a_pass():
    fa = Factor()
    calls = []

    def model(x):
        calls.append(1)
        factor_model(fa)(x)

    log_likelihood(model, factor_guide(fa), fa.data(2), num_particles=10000, batch_size=100)
    assert len(calls) == 1 + 2  # one structural trace, then 10,000 particles x 2 rows in passes of 10,000 rows
