"""The AND/OR LeNet of Fontana (arXiv 2102.07389, sec. 5): `andor_jax.models.lenet.lenet_layers` of
`AndOrConv`, `AndOrDense` and `AndActivation` (`andor_jax.layers.andor`)."""
from __future__ import annotations

from typing import Sequence

from andor_jax.layers.andor import AndActivation, AndOrConv, AndOrDense
from andor_jax.models.base import Sequential
from andor_jax.models.lenet import LENET_CONVS, LENET_DENSE, lenet_layers

LOGITS = ("nics", "raw")


def get_model(num_classes: int = 10, activation: str = "and", scale: float = 10.0, budget: float = 1.0,
              budget_final: float | None = None, budget_decay_epochs: float = 100.0, l1_rule: str = "author", bias_bounds: Sequence[float] = (0.5, 1.0, 2.0, 2.0, 2.0),
              init: str = "pytorch", init_density: float = 0.2,
              init_negative: float | Sequence[float] = 0.0, logits: str = "raw",
              skip: bool = False) -> Sequential:
    """The paper's AND/OR LeNet.

    ``bias_bounds`` gives one clamp per affine layer (the author's 0.5 and 1 for the convolutions, 2 for
    the dense layers).  ``init`` (`AndOrNeurons`'s ``init_scheme``), ``init_density`` and ``init_negative``
    (one value for all, or one per affine layer), ``budget_final`` and ``budget_decay_epochs`` (the budget
    schedule): `AndOrNeurons`.  ``logits``: ``"raw"`` (the author's)
    makes them the last layer's raw pre-activation ``W x + b``, ``"nics"`` its nics ``(W x + b) / scale``,
    bounded near ``+-budget``, where cross-entropy cannot become confident.

    ``skip`` builds the author's code's network, where the outputs of fc 120 feed the last layer beside
    those of fc 84 (`lenet_layers`); the paper describes the plain chain (the default).  Every walk
    (projection, scrambling, participation, interval propagation) reaches the layers of the branch.
    """
    affine_layers = len(LENET_CONVS) + len(LENET_DENSE) + 1
    if len(bias_bounds) != affine_layers:
        raise ValueError(f"andor_lenet needs one bias bound per affine layer ({affine_layers}), "
                         f"got bias_bounds={tuple(bias_bounds)}")
    if logits not in LOGITS:
        raise ValueError(f"andor_lenet: unknown logits {logits!r}; choose one of {LOGITS}")
    negatives = ((init_negative,) * affine_layers if isinstance(init_negative, (int, float))
                 else tuple(init_negative))
    if len(negatives) != affine_layers:
        raise ValueError(f"andor_lenet needs one init_negative or one per affine layer ({affine_layers}), "
                         f"got init_negative={init_negative}")
    common = {"scale": scale, "budget": budget, "budget_final": budget_final,
              "budget_decay_epochs": budget_decay_epochs, "l1_rule": l1_rule, "init_scheme": init,
              "init_density": init_density}
    last = affine_layers - 1
    return Sequential(lenet_layers(
        conv=lambda features, position: AndOrConv(features, kernel_size=(5, 5), bias_bound=bias_bounds[position],
                                                  init_negative=negatives[position], **common),
        dense=lambda features, position: AndOrDense(features, bias_bound=bias_bounds[position],
                                                    init_negative=negatives[position],
                                                    raw_output=logits == "raw" and position == last, **common),
        activation=lambda: AndActivation(activation),
        num_classes=num_classes, skip=skip))
