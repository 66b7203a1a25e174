import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO
from torch.distributions import Bernoulli, Normal

from pyro_iwae.importance import DataPlateError, check_data_plate, importance_traces
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.objectives import make_objective, vimco_learning_signal


def hand_log_weights(vae: VAE, x: torch.Tensor, z: dict) -> torch.Tensor:
    """log p(x, z) - log q(z | x) with torch.distributions, from the latent values ``z`` (``[k, B, dim]`` each)."""
    names = vae.latent_names
    log_q = 0.0
    below = x
    for name, layer in zip(names, vae.encoder):
        log_q = log_q + Normal(*layer.loc_scale(below)).log_prob(z[name]).sum(-1)
        below = z[name]
    log_p = Normal(0.0, 1.0).log_prob(z[names[-1]]).sum(-1)
    for lower, upper, layer in zip(names[:-1], names[1:], vae.decoder_latents):
        log_p = log_p + Normal(*layer.loc_scale(z[upper])).log_prob(z[lower]).sum(-1)
    log_p = log_p + Bernoulli(logits=vae.decoder_pixels(z[names[0]]).logits).log_prob(x).sum(-1)
    return log_p - log_q


def recorded_latents(objective, vae, x, method):
    """Run ``objective.<method>`` and return its value and the latent values its guide drew."""
    traced_guide = poutine.trace(vae.guide)
    value = getattr(objective, method)(vae.model, traced_guide, x)
    trace = traced_guide.msngr.trace
    return value, {name: trace.nodes[name]["value"].detach() for name in vae.latent_names}


@pytest.fixture
def vae_and_batch(request):
    torch.manual_seed(0)
    vae = VAE(*ARCHITECTURES[request.param])
    return vae, torch.bernoulli(torch.full((7, 784), 0.3))


@pytest.mark.parametrize("vae_and_batch", sorted(ARCHITECTURES), indirect=True)
@pytest.mark.parametrize("method", ["loss", "loss_and_grads"])
def test_iwae_loss_is_per_data_point_logsumexp(vae_and_batch, method):
    vae, x = vae_and_batch
    k = 5
    loss, z = recorded_latents(make_objective("iwae", k), vae, x, method)
    log_weights = hand_log_weights(vae, x, z)
    assert log_weights.shape == (k, 7)
    expected = -(torch.logsumexp(log_weights, 0) - math.log(k)).sum()
    per_batch = -(torch.logsumexp(log_weights.sum(1), 0) - math.log(k))
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert abs(per_batch.item() - expected.item()) > 1.0  # the test tells the two apart


@pytest.mark.parametrize("vae_and_batch", [1], indirect=True)
def test_iwae_gradients_match_hand_computation(vae_and_batch):
    # d/dtheta of -sum_i log (1/k) sum_l w_il, with z = loc(x) + scale(x) * eps held at the same eps,
    # in float64 so that recovering eps from z loses nothing
    vae, x = vae_and_batch
    vae, x = vae.double(), x.double()
    k = 4
    _, z = recorded_latents(make_objective("iwae", k), vae, x, "loss_and_grads")
    pyro_grads = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    loc, scale = vae.encoder[0].loc_scale(x)
    eps = ((z["z1"] - loc) / scale).detach()
    log_weights = hand_log_weights(vae, x, {"z1": loc + scale * eps})
    (-(torch.logsumexp(log_weights, 0) - math.log(k)).sum()).backward()
    for pyro_grad, p in zip(pyro_grads, vae.parameters()):
        assert torch.allclose(pyro_grad, p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("vae_and_batch", [1], indirect=True)
def test_iwae_elbo_computes_what_renyi_elbo_computes_to_the_bit(vae_and_batch):
    # where RenyiELBO(alpha=0) is right (one un-subsampled data plate, reparameterized latents),
    # IWAE_ELBO gives the same loss and gradients bit for bit, so runs trained before it resume unchanged
    vae, x = vae_and_batch
    results = []
    for objective in (
        RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1),
        make_objective("iwae", 5),
    ):
        vae.zero_grad()
        pyro.set_rng_seed(3)
        loss = objective.loss_and_grads(vae.model, vae.guide, x)
        results.append((loss, [p.grad.clone() for p in vae.parameters()]))
    (renyi_loss, renyi_grads), (loss, grads) = results
    assert loss == renyi_loss
    assert all(torch.equal(a, b) for a, b in zip(renyi_grads, grads))


@pytest.mark.parametrize("vae_and_batch", sorted(ARCHITECTURES), indirect=True)
def test_elbo_loss_is_mean_log_weight(vae_and_batch):
    vae, x = vae_and_batch
    loss, z = recorded_latents(make_objective("elbo", 3), vae, x, "loss")
    assert loss == pytest.approx(-hand_log_weights(vae, x, z).sum(1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("layers", sorted(ARCHITECTURES))
def test_model_and_guide_pass_pyro_validation(objective, layers):
    # with Pyro's checks of supports, shapes and arguments on, the loss is still the hand computation's
    vae = VAE(*ARCHITECTURES[layers])
    x = torch.bernoulli(torch.full((5, 784), 0.5))
    with pyro.validation_enabled(True):
        loss, z = recorded_latents(make_objective(objective, 3), vae, x, "loss_and_grads")
    log_weights = hand_log_weights(vae, x, z)  # [3, 5]
    if objective == "elbo":
        expected = -log_weights.sum(1).mean()
    else:
        expected = -(torch.logsumexp(log_weights, 0) - math.log(3)).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_iwae_with_one_particle_is_the_elbo():
    torch.manual_seed(0)
    vae = VAE()
    x = torch.bernoulli(torch.full((5, 784), 0.5))
    pyro.set_rng_seed(1)
    iwae = make_objective("iwae", 1).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    elbo = make_objective("elbo", 1).loss(vae.model, vae.guide, x)
    assert iwae == pytest.approx(elbo, rel=1e-6)


@pytest.mark.parametrize("num_particles", [1, 3])
def test_the_elbos_step_is_trace_elbos_with_a_discrete_guide(num_particles):
    """``VAE_ELBO.backward`` against ``Trace_ELBO.loss_and_grads`` on the same draws of a Bernoulli guide site."""

    def model(x):
        prior_logit = pyro.param("prior_logit", torch.tensor(-0.5))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=prior_logit))
            pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)

    def guide(x):
        guide_logit = pyro.param("guide_logit", torch.tensor(0.8))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=guide_logit + 0.3 * x))

    x = torch.randn(6)
    gradients = []
    elbos = make_objective("elbo", num_particles, 1), Trace_ELBO(num_particles, 1, vectorize_particles=True)
    for objective in elbos:  # max_plate_nesting given: Trace_ELBO would draw a trace to guess it
        pyro.get_param_store().clear()
        pyro.set_rng_seed(3)
        step = objective.backward if hasattr(objective, "backward") else objective.loss_and_grads
        loss = float(step(model, guide, x))
        store = pyro.get_param_store()
        gradients.append((loss, *(store.get_param(name).unconstrained().grad.item() for name in store)))
    ours, theirs = gradients
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert abs(theirs[2]) > 0.01  # the score-function term is there to compare


def plated_model(plate):
    def model(x):
        with plate(x):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    return model


def latent_guide(plate):
    def guide(x):
        with plate(x):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    return guide


def data_plate(x):
    return pyro.plate("data", x.shape[0])


def test_a_scale_on_some_sites_only_is_refused():
    # KL annealing with poutine.scale on the latent alone is not a bound on log p(x)
    def model(x):
        with data_plate(x):
            with poutine.scale(scale=0.5):
                pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(DataPlateError, match="different scales"):
        make_objective("iwae", 3).loss(model, latent_guide(data_plate), torch.zeros(10))


def test_model_and_guide_must_share_one_data_plate():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    guide = latent_guide(lambda x: pyro.plate("data", x.shape[0], dim=-2))
    with pytest.raises(DataPlateError, match="same size, same dim"):
        check_data_plate(*importance_traces(model, guide, torch.zeros(10)))


def test_two_plates_that_every_site_shares_are_ambiguous():
    def model(x):
        with pyro.plate("groups", 2, dim=-2), data_plate(x):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def guide(x):
        with pyro.plate("groups", 2, dim=-2), data_plate(x):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(DataPlateError, match=r"the plates 'groups' \(dim -2\), 'data' \(dim -1\) .* ambiguous"):
        check_data_plate(*importance_traces(model, guide, torch.zeros(10)))


def test_a_good_model_passes_and_reports_its_plate():
    frame = check_data_plate(*importance_traces(plated_model(data_plate), latent_guide(data_plate), torch.zeros(10)))
    assert (frame.name, frame.dim, frame.size) == ("data", -1, 10)


def test_unknown_objective_and_bad_particles():
    with pytest.raises(ValueError, match="unknown objective 'vae'"):
        make_objective("vae", 1)
    with pytest.raises(ValueError, match="at least 1"):
        make_objective("iwae", 0)


def test_the_iwae_objective_refuses_a_global_latent():
    def model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift, 1.0), obs=x)

    def guide(x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))

    for k in (1, 4):  # with and without Pyro's vectorized particle plate
        objective = make_objective("iwae", k)
        for method in (objective.loss, objective.loss_and_grads):
            with pytest.raises(DataPlateError, match="'shift' is outside"):
                method(model, guide, torch.zeros(6))


def test_the_vimco_learning_signal_is_mnih_and_rezendes_leave_one_out_term():
    """Eq. 9 of Mnih & Rezende (2016), written out per particle: L less L with log w_l replaced by the others' mean."""
    log_weights = torch.tensor([[-3.0, 0.5], [-1.0, 2.0], [-7.5, 1.0]], dtype=torch.float64)  # [k = 3, batch 2]

    def bound(column):
        return math.log(sum(math.exp(value) for value in column) / len(column))

    expected = torch.zeros_like(log_weights)
    for i in range(2):
        column = log_weights[:, i].tolist()
        for particle in range(3):
            before, after = column[:particle], column[particle + 1 :]
            expected[particle, i] = bound(column) - bound(before + [sum(before + after) / 2] + after)
    assert torch.allclose(vimco_learning_signal(log_weights), expected, rtol=1e-12)
    # one particle: no others, the signal is the bound itself
    assert torch.allclose(vimco_learning_signal(log_weights[:1]), log_weights[:1])
