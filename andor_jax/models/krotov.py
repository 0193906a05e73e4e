"""Krotov & Hopfield's network (PNAS 2019) as Holzhausen et al. read it out: flatten, a layer of hidden
units learnt by the local winner-take-all rule (`andor_jax.layers.krotov.KrotovHopfield`), ``relu(I)^n``
and a linear readout.

The same architecture serves both phases: the local phase trains ``layers_1`` with the objective
``krotov`` (the readout stays at its initial values), the readout phase starts from that run
(``train.init_from``) and trains ``layers_3`` alone by cross-entropy (``train.trainable``).
"""
from __future__ import annotations

from andor_jax.layers import Dense, Flatten
from andor_jax.layers.krotov import KrotovHopfield, Power
from andor_jax.models.base import Sequential


def get_model(units: int = 2000, p: float = 3.0, radius: float = 1.0, normalise_inputs: bool = True,
              exponent: float = 4.5, num_classes: int = 10) -> Sequential:
    """``Flatten -> KrotovHopfield(units, p, R) -> relu(.)^exponent -> Dense(num_classes)``."""
    return Sequential((Flatten(), KrotovHopfield(units, p=p, radius=radius, normalise_inputs=normalise_inputs),
                       Power(exponent), Dense(num_classes)))
