"""Experiment configs: one module per experiment, each with ``get_config() -> ml_collections.ConfigDict``.

Installed as the package ``andor_jax.configs`` so that ``andor-jax train --config quickstart`` works from
any directory; a path to a ``.py`` file works too.
"""
