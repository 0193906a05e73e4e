"""andor_jax: adversarially robust neural architectures in JAX.

Train them (`andor_jax.train`), attack them (`andor_jax.attacks`), certify them (`andor_jax.bounds`) and
report honestly how robust they are (`andor_jax.report`).
"""
__version__ = "0.1.0"
