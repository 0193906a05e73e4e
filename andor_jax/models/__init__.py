"""Models: the model protocol and `Sequential` (`andor_jax.models.base`); one architecture per module of
this package (``mlp``, ``cnn``, ``mwd``, ``lenet``, ``andor_lenet`` ...), each with ``get_model(**kwargs)``,
found by name by `build_model` and never imported here."""
from andor_jax.models.base import (Model, Sequential, architecture, attack_surface, build_model, check_gradient_mode,
                                   gradient_modes, inference_settings, known_architectures, logits, monitor_logits,
                                   monitor_metric, project, randomised, representation, submodels,
                                   with_inference_settings)

__all__ = ["Model", "Sequential", "architecture", "attack_surface", "build_model", "check_gradient_mode",
           "gradient_modes", "inference_settings", "known_architectures", "logits", "monitor_logits",
           "monitor_metric", "project", "randomised", "representation", "submodels", "with_inference_settings"]
