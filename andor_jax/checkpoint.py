"""Checkpoints: an orbax `CheckpointManager` behind a small API.

A checkpoint holds the whole `TrainState` (parameters, optimiser state, step, PRNG key) and a JSON
fingerprint of the architecture (its config and every parameter's shape).  Restoring compares fingerprints
first, so a checkpoint of another architecture or config fails with an error that names the difference
instead of an obscure shape error deep inside orbax.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointMismatchError(ValueError):
    """The checkpoint on disk was written by another architecture or configuration."""


def fingerprint(model_config: ml_collections.ConfigDict, state: PyTree) -> dict:
    """What must agree between a checkpoint and the run restoring it: the model config and the shape and
    dtype of every leaf of the state."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    shapes = {jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)] for path, leaf in leaves}
    # A JSON round trip makes it compare equal to what is read back (tuples become lists).
    return json.loads(json.dumps({"model": model_config.to_dict(), "shapes": shapes}))


def describe_mismatch(saved: dict, current: dict) -> str:
    if saved["model"] != current["model"]:
        return f"model config differs: checkpoint has {saved['model']}, this run has {current['model']}"
    missing = sorted(set(saved["shapes"]) ^ set(current["shapes"]))
    if missing:
        return f"state structure differs (e.g. {missing[:3]})"
    changed = [k for k in saved["shapes"] if saved["shapes"][k] != current["shapes"][k]]
    return f"shapes differ at {changed[:3]}: checkpoint {[saved['shapes'][k] for k in changed[:3]]}, " \
           f"this run {[current['shapes'][k] for k in changed[:3]]}"


class Checkpointer:
    """Saves every ``every_steps`` steps and at every epoch end (``force=True``), keeping the last ``keep``.

    Example::

        ckpt = Checkpointer(workdir / "checkpoints", every_steps=500, keep=3)
        state = ckpt.restore_latest(state, fingerprint)   # unchanged if there is none
        ckpt.save(state, fingerprint)
    """

    def __init__(self, directory: str | os.PathLike, *, every_steps: int | None = None, keep: int = 3):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               save_interval_steps=every_steps or 1)
        self._every_steps = every_steps
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                              item_names=("state", "fingerprint"))

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: PyTree, fingerprint_: dict, *, force: bool = False) -> bool:
        """Saves ``state`` at its step if the interval is due (or ``force``); returns whether it saved."""
        step = int(state.step)
        if not force and (self._every_steps is None or step % self._every_steps):
            return False
        if step in self._manager.all_steps():
            return False
        saved = self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), fingerprint=ocp.args.JsonSave(fingerprint_)), force=True)
        return bool(saved)

    def wait(self) -> None:
        """Blocks until asynchronous saves have reached the disk."""
        self._manager.wait_until_finished()

    def restore_latest(self, like: PyTree, fingerprint_: dict) -> PyTree:
        """The latest checkpoint restored into the structure and shardings of ``like``; ``like`` itself if
        there is no checkpoint.  Raises `CheckpointMismatchError` when the fingerprints differ."""
        step = self.latest_step
        if step is None:
            return like
        saved_fingerprint = self._manager.restore(
            step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore()))["fingerprint"]
        if saved_fingerprint != fingerprint_:
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {self._manager.directory} belongs to another architecture or "
                f"configuration: {describe_mismatch(saved_fingerprint, fingerprint_)}. Use a new --workdir.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return type(like)(*restored["state"]) if isinstance(like, tuple) else restored["state"]

    def restore_latest_variables(self, like: PyTree, fingerprint_: dict) -> dict:
        """Only the model's variables (``params`` and ``model_state``) of the latest checkpoint, for
        evaluation: whatever optimiser wrote the checkpoint, only the architecture has to agree."""
        step = self.latest_step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self._manager.directory}: train first")
        saved = self._manager.restore(step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore()))
        model_parts = (".params", ".model_state")
        wanted, found = (
            {**f, "shapes": {k: v for k, v in f["shapes"].items() if k.startswith(model_parts)}}
            for f in (fingerprint_, saved["fingerprint"]))
        if wanted != found:
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {self._manager.directory} belongs to another architecture: "
                f"{describe_mismatch(found, wanted)}")
        raw = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        return {"params": raw["params"], **raw["model_state"]}

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
