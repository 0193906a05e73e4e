"""Checkpoints: an orbax `CheckpointManager` behind a small API.

A checkpoint holds the whole `TrainState` (parameters, model and objective state, optimiser state, step,
PRNG key) and a JSON fingerprint of the architecture (its config and every parameter's shape).  Restoring
compares fingerprints first, so a checkpoint of another architecture or config fails with an error that
names the difference instead of an obscure shape error deep inside orbax.  `init_from` starts a run from
the variables of another work directory's latest checkpoint (``train.init_from``), checked leaf by leaf.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from andor_jax import models
from andor_jax.train import path_names

PyTree = Any


class CheckpointMismatchError(ValueError):
    """The checkpoint on disk was written by another architecture or configuration."""


def fingerprint(model_config: ml_collections.ConfigDict, state: PyTree) -> dict:
    """What must agree between a checkpoint and the run restoring it: the model config, less the keys its
    architecture declares as inference settings (`models.inference_settings`, e.g. CARSO's draws), and the
    shape and dtype of every leaf of the state."""
    settings = models.inference_settings(model_config)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    shapes = {jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)] for path, leaf in leaves}
    model = {key: value for key, value in model_config.to_dict().items() if key not in settings}
    # A JSON round trip makes it compare equal to what is read back (tuples become lists).
    return json.loads(json.dumps({"model": model, "inference_settings": list(settings), "shapes": shapes}))


def comparable(saved: dict, current: dict) -> dict:
    """``saved`` without the model keys that ``current`` declares as inference settings: a checkpoint
    written before they were declared kept them in its fingerprint."""
    ignored = set(current.get("inference_settings", ()))
    return {**saved, "model": {k: v for k, v in saved["model"].items() if k not in ignored},
            "inference_settings": current.get("inference_settings", [])}


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
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "fingerprint": ocp.JsonCheckpointHandler()})

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
        saved_fingerprint = comparable(self._manager.restore(
            step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore()))["fingerprint"], fingerprint_)
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
            for f in (fingerprint_, comparable(saved["fingerprint"], fingerprint_)))
        if wanted != found:
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {self._manager.directory} belongs to another architecture: "
                f"{describe_mismatch(found, wanted)}")
        return self.latest_raw_variables()

    def latest_raw_variables(self) -> dict:
        """The model's variables (``params`` and the ``model_state`` collections) of the latest checkpoint as
        saved, without any check: the caller compares them with what it expects.  They are placed whole on
        this process's first device, whatever devices and processes wrote them (a checkpoint of a
        multi-process run is read by one process, and each process of an evaluation reads its own copy)."""
        step = self.latest_step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self._manager.directory}: train first")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                                self._manager.item_metadata(step)["state"])
        raw = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        return {"params": raw["params"], **(raw.get("model_state") or {})}

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def init_from(workdir: str | os.PathLike, params: PyTree, model_state: PyTree, into: str = "") -> tuple[PyTree, PyTree]:
    """``(params, model_state)`` with the sub-tree at ``into`` (names joined by ``/``; ``""``: the whole tree)
    of every collection replaced by the variables of the latest checkpoint in ``workdir`` (another run's work
    directory), for ``train.init_from`` / ``train.init_from_into``.

    The checkpoint's variables must match that sub-tree exactly: the same parameter paths, shapes and dtypes.
    A missing work directory or checkpoint, a parameter present on one side only (another architecture) or
    a shape mismatch is a ValueError naming the parameter path (e.g. ``params/classifier/layers_0/kernel``).
    """
    directory = pathlib.Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise ValueError(f"train.init_from: {workdir} is not a work directory with checkpoints "
                         f"({directory} does not exist)")
    manager = Checkpointer(directory)
    try:
        if manager.latest_step is None:
            raise ValueError(f"train.init_from: no checkpoint in {directory}")
        source = manager.latest_raw_variables()
    finally:
        manager.close()
    into_path = tuple(p for p in into.strip("/").split("/") if p)
    target = {"params": params, **model_state}
    wanted = {name: _subtree(tree, into_path) for name, tree in target.items()}
    wanted = {name: tree for name, tree in wanted.items() if tree is not None}
    if "params" not in wanted:
        raise ValueError(f"train.init_from_into: this model has no parameter sub-tree {into!r}; top-level "
                         f"parameters: {sorted(params)}")
    _check_same_leaves(source, wanted, into_path, workdir)
    replaced = {name: _with_subtree(tree, into_path, jax.tree.map(jnp.asarray, source[name]))
                if name in wanted else tree for name, tree in target.items()}
    new_params = replaced.pop("params")
    return new_params, replaced


def _leaf_table(tree: PyTree) -> dict[tuple[str, ...], Any]:
    return {path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_same_leaves(source: dict, wanted: dict, into_path: tuple[str, ...], workdir) -> None:
    def name(path):  # the path in this run's tree: collection, then `into`, then the rest
        return "/".join((path[0], *into_path, *path[1:]))

    found, expected = _leaf_table(source), _leaf_table(wanted)
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(f"train.init_from: the checkpoint in {workdir} has no parameter {name(missing[0])} "
                         f"({len(missing)} missing): another architecture?")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ValueError(f"train.init_from: the checkpoint in {workdir} has {name(extra[0])}, which this model "
                         f"does not have at {'/'.join(into_path) or 'its root'} ({len(extra)} such): another "
                         f"architecture?")
    for path, leaf in expected.items():
        saved = found[path]
        if tuple(saved.shape) != tuple(leaf.shape) or str(saved.dtype) != str(leaf.dtype):
            raise ValueError(f"train.init_from: parameter {name(path)} has shape {tuple(saved.shape)} "
                             f"{saved.dtype} in {workdir} but {tuple(leaf.shape)} {leaf.dtype} in this model")


def _subtree(tree: PyTree, path: tuple[str, ...]):
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _with_subtree(tree: PyTree, path: tuple[str, ...], value: PyTree) -> PyTree:
    if not path:
        return value
    return {**tree, path[0]: _with_subtree(tree[path[0]], path[1:], value)}
