"""The MWD network of Agrawal, de Alfaro & Helmbold (2019): layers of `andor_jax.layers.mwd.MWD` units."""
from __future__ import annotations

from typing import Sequence

from andor_jax.layers import Flatten
from andor_jax.layers.mwd import KINDS, MWD
from andor_jax.models.base import Sequential


def get_model(hidden: Sequence[int] = (512, 512, 512), num_classes: int = 10,
              kinds: Sequence[str] = ("u", "neg", "u", "neg")) -> Sequential:
    """Flatten, then one `MWD` layer per width in ``(*hidden, num_classes)`` with the matching entry of
    ``kinds``.  The outputs are used directly (no softmax) with a squared loss."""
    widths = (*hidden, num_classes)
    if len(kinds) != len(widths):
        raise ValueError(f"the mwd architecture needs one kind per layer: {len(widths)} layers "
                         f"(hidden={tuple(hidden)} + output) but kinds={tuple(kinds)}")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown MWD kind {kind!r}; choose one of {KINDS}")
    return Sequential((Flatten(), *(MWD(width, kind) for width, kind in zip(widths, kinds))))
