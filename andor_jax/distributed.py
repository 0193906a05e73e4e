"""Multi-process data parallelism: one training or evaluation run as N cooperating processes (`jax.distributed`).

Every process runs the same program (single program, multiple data).  The processes find each other
through a coordinator, ``host:port`` of process 0, given by ``--coordinator``, ``--num-processes`` and
``--process-id`` on the command line, or by the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; ``--coordinator auto`` lets JAX read them from the cluster
(SLURM, Open MPI, a Cloud TPU pod slice, Kubernetes).  Nothing set: one process, as before.

Training (`andor_jax.train.DataParallel`): the mesh spans every device of every process, the state is
replicated on all of them and the global batch is split over all of them; each process holds the whole
data set, so it materialises only the rows of its own devices (`global_array`).  XLA's all-reduce of the
gradient crosses processes (gloo on CPU, NCCL on GPU, ICI on TPU), so N processes compute the step of one
process with all the devices.  Checkpoints are written by orbax from every process together (each its own
shards, a shared directory); files of the run's own (``config.json``, ``metrics.jsonl``, the report) and
progress bars come from process 0 only (`is_main`).

Evaluation (`Share`): the chunks of examples are dealt round-robin over the processes, each attacks its
own with the key the chunk has in a one-process run, and every example's outcome is gathered onto every
process before process 0 writes the report: the outcomes are those of one process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

PyTree = Any

ENVIRONMENT = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
               "process_id": "JAX_PROCESS_ID"}
AUTO = "auto"  # --coordinator auto: JAX's cluster detection (SLURM, Open MPI, Cloud TPU, Kubernetes)


class Settings(NamedTuple):
    """How this process joins a run: all None for a one-process run; ``coordinator='auto'`` with the
    others None for JAX's cluster detection."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def settings_from(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                  environ: Mapping[str, str] = os.environ) -> Settings:
    """The `Settings` of the flags, each missing one taken from its environment variable (`ENVIRONMENT`).

    Raises ValueError naming the flag for a partial set (a coordinator without the count, an id outside
    ``0 .. num_processes - 1``) or a value that is not an integer."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for name, variable in ENVIRONMENT.items():
        if given[name] is None and environ.get(variable):
            given[name] = environ[variable]
    for name in ("num_processes", "process_id"):
        if given[name] is not None:
            try:
                given[name] = int(given[name])
            except ValueError:
                raise ValueError(f"--{name.replace('_', '-')} (or ${ENVIRONMENT[name]}) must be an integer, "
                                 f"got {given[name]!r}") from None
    settings = Settings(**given)
    if settings.coordinator == AUTO:
        if settings.num_processes is not None or settings.process_id is not None:
            raise ValueError("--coordinator auto reads the process count and id from the cluster; "
                             "give neither --num-processes nor --process-id")
        return settings
    if settings == Settings():
        return settings
    if None in settings:
        missing = [f"--{name.replace('_', '-')}" for name, value in settings._asdict().items() if value is None]
        raise ValueError(f"a multi-process run needs --coordinator HOST:PORT, --num-processes and --process-id "
                         f"(or ${', $'.join(ENVIRONMENT.values())}); missing: {', '.join(missing)}")
    if ":" not in settings.coordinator:
        raise ValueError(f"--coordinator must be HOST:PORT of process 0 (or 'auto'), got {settings.coordinator!r}")
    if settings.num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {settings.num_processes}")
    if not 0 <= settings.process_id < settings.num_processes:
        raise ValueError(f"--process-id must be in 0..{settings.num_processes - 1}, got {settings.process_id}")
    return settings


def initialize(settings: Settings, *, timeout_seconds: int = 300) -> bool:
    """Joins the run ``settings`` describes (`jax.distributed.initialize`), before any computation; returns
    whether this is a multi-process run.  On CPU the collectives go through gloo.  A second call (the same
    process running train, then evaluate) keeps the first connection."""
    if settings == Settings():
        return False
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if settings.coordinator == AUTO:
        jax.distributed.initialize(initialization_timeout=timeout_seconds)
    else:
        jax.distributed.initialize(settings.coordinator, settings.num_processes, settings.process_id,
                                   initialization_timeout=timeout_seconds)
    return jax.process_count() > 1


def is_main() -> bool:
    """Whether this process writes the run's files and progress: process 0 (the only one of a one-process run)."""
    return jax.process_index() == 0


def global_array(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """The array ``host`` (the same on every process) placed with ``sharding``: each process transfers only
    the slices of its own devices.  Within one process, `jax.device_put`."""
    if sharding.is_fully_addressable:
        return jax.device_put(host, sharding)
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def global_tree(tree: PyTree, sharding: jax.sharding.Sharding) -> PyTree:
    """Every leaf of ``tree`` (the same values on every process) placed with ``sharding``."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: global_array(np.asarray(jax.device_get(local(leaf))), sharding), tree)


def local(tree: PyTree) -> PyTree:
    """``tree`` with every replicated array that spans other processes replaced by this process's copy (on
    one of its devices), for host-side work of one process: test accuracy, an objective's ``on_epoch``."""
    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                raise ValueError(f"an array sharded over processes ({leaf.sharding}) has no local copy")
            return leaf.addressable_data(0)
        return leaf
    return jax.tree.map(one, tree)


class Share(NamedTuple):
    """This process's share of an evaluation (`andor_jax.evaluators.robustness.run`): chunk ``i`` of the
    examples is attacked by process ``i % count``, with the key it has in a one-process run."""

    index: int
    count: int

    def owns(self, chunk_index: int) -> bool:
        return chunk_index % self.count == self.index

    def progress_path(self, path: str | os.PathLike | None) -> Path | None:
        """The file keeping this process's chunks (``report_progress.npz`` -> ``report_progress.1of4.npz``)."""
        if path is None:
            return None
        path = Path(path)
        return path.with_name(f"{path.stem}.{self.index}of{self.count}{path.suffix}")

    def gather(self, arrays: dict[str, np.ndarray], *, chunk: int, summed: tuple[str, ...] = ()) -> None:
        """Replaces, in place, every per-example array of ``arrays`` (its rows in chunks of ``chunk``) by the
        rows each chunk's owner computed, and every array named in ``summed`` by its sum over processes.
        A collective: every process calls it with arrays of the same names and shapes."""
        from jax.experimental import multihost_utils

        names = sorted(arrays)
        gathered = multihost_utils.process_allgather({name: arrays[name].astype(np.float32) for name in names})
        for name in names:
            values = np.asarray(gathered[name])  # (count, ...)
            if name in summed:
                combined = values.sum(axis=0)
            else:
                owner = (np.arange(values.shape[1]) // chunk) % self.count
                combined = values[owner, np.arange(values.shape[1])]
            arrays[name][...] = combined.astype(arrays[name].dtype)

    def finish(self, saved, progress_path: str | os.PathLike | None, *, chunks: int, chunk: int) -> None:
        """After this process attacked its chunks: gathers every example's outcome into ``saved`` (a
        `robustness.ChunkProgress`), removes this process's file and has process 0 save the whole at
        ``progress_path``, as a one-process run leaves it (a collective)."""
        self.gather(saved.arrays, chunk=chunk, summed=("seconds",))
        if saved.path is not None:
            saved.path.unlink(missing_ok=True)
        if self.index == 0 and progress_path is not None:
            saved.path = Path(progress_path)
            saved.save(chunks)


def share() -> Share | None:
    """This process's `Share` of an evaluation in a multi-process run; None in a one-process run."""
    return Share(jax.process_index(), jax.process_count()) if jax.process_count() > 1 else None
