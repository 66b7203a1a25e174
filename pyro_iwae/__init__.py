"""Importance Weighted Autoencoders (Burda et al., 2016) in Pyro."""

from pyro_iwae.checkpoints import load_model
from pyro_iwae.compiled import compile_objective
from pyro_iwae.data import load_dataset
from pyro_iwae.evaluation import ImportanceEstimate, active_units, log_likelihood
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.importance import DataPlateError, check_data_plate, importance_weights, log_importance_weights
from pyro_iwae.models import VAE
from pyro_iwae.objectives import IWAE_ELBO, IWAE_STL, VAE_ELBO, IWAE_DReG, make_objective
from pyro_iwae.training import burda_learning_rates, train

__version__ = "0.1.0"
__all__ = [
    "IWAE_ELBO",
    "IWAE_STL",
    "IWAE_DReG",
    "VAE",
    "VAE_ELBO",
    "DataPlateError",
    "ImportanceEstimate",
    "active_units",
    "burda_learning_rates",
    "check_data_plate",
    "compile_objective",
    "importance_weights",
    "keep_freed_memory",
    "load_dataset",
    "load_model",
    "log_importance_weights",
    "log_likelihood",
    "make_objective",
    "train",
]
