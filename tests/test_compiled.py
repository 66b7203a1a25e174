"""The compiled step (pyro_iwae.compiled) computes what the eager objectives compute, on the same random numbers."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_iwae.compiled as compiled_module
from pyro_iwae.compiled import compile_objective
from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.experiments.config import ConfigError, RunConfig
from pyro_iwae.models import VAE
from pyro_iwae.objectives import make_objective


def steps(vae, objective, batches, seed=1):
    """The loss and the gradients of each of a few gradient-descent steps, from one seed."""
    pyro.set_rng_seed(seed)
    results = []
    for x in batches:
        for p in vae.parameters():
            p.grad = None
        loss = objective.loss_and_grads(vae.model, vae.guide, x)
        results.append((loss, [p.grad.clone() for p in vae.parameters()]))
        with torch.no_grad():  # the next step must see the new values: the parameters are the graph's inputs
            for p in vae.parameters():
                p -= 1e-3 * p.grad
    return results


def assert_same_steps(eager, compiled, rtol):
    for (eager_loss, eager_grads), (compiled_loss, compiled_grads) in zip(eager, compiled):
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-6)
        for a, b in zip(eager_grads, compiled_grads):
            torch.testing.assert_close(b, a, rtol=rtol, atol=rtol * a.abs().max().item())


@pytest.fixture
def vae_and_batches(device):
    torch.manual_seed(0)
    vae = VAE((30, 20), (6, 4)).to(device)  # two stochastic layers: a latent that the guide's next layer reads
    # a last batch of another size, as an epoch's last can be: traced and compiled again
    batches = [torch.bernoulli(torch.full((rows, 784), 0.3, device=device)) for rows in (5, 5, 3)]
    return vae, batches


@pytest.mark.parametrize(
    "name, k, options",
    [
        ("elbo", 1, {}),
        ("elbo", 3, {}),
        ("iwae", 3, {}),
        ("iwae-stl", 3, {}),
        ("miwae", 2, {"num_groups": 2}),
        ("ciwae", 3, {"beta": 0.3}),
    ],
)
def test_the_traced_step_is_the_eager_step(vae_and_batches, name, k, options):
    # the eager elbo is Pyro's Trace_ELBO, an independent computation of the same estimator
    vae, batches = vae_and_batches
    twin = copy.deepcopy(vae)
    eager = steps(vae, make_objective(name, k, **options), batches)
    compiled = compile_objective(make_objective(name, k, **options), twin, backend="aot_eager")
    assert_same_steps(eager, steps(twin, compiled, batches), rtol=1e-4)


def test_inductor_compiles_the_step_to_the_same_numbers(vae_and_batches):
    vae, batches = vae_and_batches
    twin = copy.deepcopy(vae)
    eager = steps(vae, make_objective("iwae", 3), batches)
    # fused kernels round differently from eager ones: equal to float32 rounding, not to the bit
    assert_same_steps(eager, steps(twin, compile_objective(make_objective("iwae", 3), twin), batches), rtol=1e-3)


def test_a_backend_that_fails_falls_back_to_the_eager_step(vae_and_batches):
    vae, batches = vae_and_batches
    twin = copy.deepcopy(vae)
    eager = steps(vae, make_objective("iwae", 3), batches)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    compiled = compile_objective(make_objective("iwae", 3), twin, backend=broken_backend)
    with pytest.warns(UserWarning, match="could not compile the step of IWAE_ELBO, so it runs uncompiled"):
        fallen_back = steps(twin, compiled, batches)
    for (eager_loss, eager_grads), (loss, grads) in zip(eager, fallen_back):  # to the bit: the same eager code
        assert loss == eager_loss and all(torch.equal(a, b) for a, b in zip(eager_grads, grads))


def test_a_parameter_outside_the_module_is_refused():
    net = nn.Linear(2, 2)

    def model(x):
        pyro.module("net", net)
        shift = pyro.param("shift", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(net(z) + shift, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    objective = compile_objective(make_objective("iwae", 3), net, backend="aot_eager")
    with pytest.raises(ValueError, match="parameter \\(shift\\) that is not in the module"):
        objective.loss_and_grads(model, guide, torch.randn(4, 2))


def test_a_step_that_reads_tensor_values_is_refused():
    # STL runs the IAF guide again at its samples, through the flows' inverse: a trace cannot follow it
    vae = VAE((30,), (4,), guide="iaf")
    objective = compile_objective(make_objective("iwae-stl", 2), vae, backend="aot_eager")
    with pytest.raises(
        ValueError, match="the step of IWAE_STL cannot be traced: it reads a tensor's value.*Run it uncompiled"
    ):
        objective.loss_and_grads(vae.model, vae.guide, torch.bernoulli(torch.full((3, 784), 0.3)))


@pytest.mark.parametrize("name, options", [("iwae-dreg", {}), ("piwae", {"num_groups": 2})])
def test_objectives_whose_gradient_is_two_backward_passes_are_refused(name, options):
    with pytest.raises(ValueError, match="cannot be compiled"):
        compile_objective(make_objective(name, 2, **options), VAE())
    with pytest.raises(ConfigError, match="--compile works with --objective elbo, iwae, iwae-stl, miwae, ciwae"):
        RunConfig(objective=name, compile=True, groups=options.get("num_groups"))


def test_the_compiled_evaluator_gives_the_eager_estimates():
    torch.manual_seed(0)
    vae = VAE((30,), (4,))
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    estimates = []
    for compile in (False, True):
        pyro.set_rng_seed(3)  # one pass of 6 images x 40 particles: one shape to compile
        estimates.append(log_likelihood(vae.model, vae.guide, x, num_particles=40, batch_size=6, compile=compile))
    eager, compiled = estimates
    torch.testing.assert_close(compiled.log_likelihood, eager.log_likelihood, rtol=0, atol=1e-3)
    torch.testing.assert_close(compiled.elbo, eager.elbo, rtol=0, atol=1e-3)
    # a different draw moves the estimates far more than rounding: the compiled passes drew what eager ones did
    pyro.set_rng_seed(4)
    other = log_likelihood(vae.model, vae.guide, x, num_particles=40, batch_size=6)
    assert (other.elbo - eager.elbo).abs().max() > 0.1


def test_an_evaluator_pass_that_fails_to_compile_runs_eagerly():
    torch.manual_seed(0)
    vae = VAE((30,), (4,))
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    eager = log_likelihood(vae.model, vae.guide, x, num_particles=40, seed=1)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    original = compiled_module.CompiledFunction.__init__

    def with_broken_backend(self, fn, example_args, backend="inductor"):
        original(self, fn, example_args, broken_backend)

    with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning, match="could not compile partial"):
        patch.setattr(compiled_module.CompiledFunction, "__init__", with_broken_backend)
        fallen_back = log_likelihood(vae.model, vae.guide, x, num_particles=40, seed=1, compile=True)
    assert torch.equal(fallen_back.log_likelihood, eager.log_likelihood)
