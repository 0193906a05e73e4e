"""Evaluators: each runs one kind of evaluation on a set of test examples and returns per-example outcomes.

- `andor_jax.evaluators.robustness`: the attack suite (upper bounds on robust accuracy), resumable;
- `andor_jax.evaluators.certify`: interval bound propagation (lower bounds: certified accuracy);
- `andor_jax.evaluators.examples`: the exact example set an outcome was computed on.

Presenting the outcomes (JSON, markdown, plots) is `andor_jax.report`; `andor_jax.evaluation` strings the
two together for a trained work directory.
"""
