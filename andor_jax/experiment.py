"""Running an experiment from a config: data, model, the training loop with checkpoints, evaluation.

`train.py` holds the pieces of one step; this module strings steps into epochs and owns everything with
side effects (files in the work directory, progress bars).  A work directory holds::

    config.json        the resolved config of the run
    data.json          the data it was trained on (`data.Provenance`: evaluate and certify use the same)
    checkpoints/       orbax checkpoints (every N steps and every epoch, the last K kept)
    metrics.jsonl      one line per epoch: train loss/accuracy, test accuracy, wall time
    report.json/.md    written by `andor-jax evaluate` / `certify`
"""
from __future__ import annotations

import functools
import json
import pathlib
import signal
import sys
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from andor_jax import checkpoint, data, distributed, models, objectives, train, validation

PyTree = Any


class Experiment:
    """A config made concrete: its data set, model, optimiser, objective, projection and step function."""

    def __init__(self, config: ml_collections.ConfigDict, *, data_dir: str | None = None,
                 dataset: data.Dataset | None = None):
        self.config = config
        self.dataset = dataset if dataset is not None else load_data(config.data, data_dir)
        self.model = models.build_model(config.model)
        self.optimizer = train.make_optimizer(config.train, self.total_steps)
        self.objective = objectives.get_objective(self.model, config.train, self.steps_per_epoch)
        self.projection = lambda params, step: models.project(self.model, params, step / self.steps_per_epoch)

    @property
    def steps_per_epoch(self) -> int:
        return data.num_batches(len(self.dataset.x_train), self.config.train.batch_size, drop_remainder=True)

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * self.steps_per_epoch

    def init_state(self) -> train.TrainState:
        return train.init_state(self.model, self.optimizer, self.objective, self.dataset.x_train[:1],
                                self.config.seed, self.projection)

    def start_from(self, state: train.TrainState) -> train.TrainState:
        """``state`` restarted from the variables of ``train.init_from`` (into ``train.init_from_into``)."""
        tc = self.config.train
        params, model_state = checkpoint.init_from(tc.init_from, state.params, state.model_state,
                                                   into=tc.init_from_into)
        return train.restart(state, params, model_state, self.optimizer, self.objective)

    def train_step(self, parallel: train.DataParallel):
        """The jitted step of this experiment's training (one compilation for the whole run)."""
        return parallel.jit_step(train.make_train_step(
            self.optimizer, self.objective, projection=self.projection,
            rho_schedule=train.psd_mix_schedule(self.config.train, self.total_steps),
            trainable=tuple(self.config.train.trainable)))

    def logits_fn(self, variables: PyTree, *, rho=None) -> Callable[[jax.Array], jax.Array]:
        """The trained network as a function of a batch (``rho`` = 1: pseudo-gradients in its backward)."""
        return lambda x: self.model.apply(variables, x, rho=rho)


DATA_RECORD = "data.json"  # the data a work directory was trained on: a `data.Provenance`
_NOTICES_SHOWN: set[str] = set()  # sources whose notice this process has printed


def load_data(config: ml_collections.ConfigDict, data_dir: str | None, *,
              recorded: data.Provenance | None = None) -> data.Dataset:
    """The data set of a config's ``data`` block, cut to its ``limit_train`` / ``limit_test``.

    With ``recorded`` (the data a work directory was trained on, `recorded_data`), that same data is read
    again, from ``data_dir`` if given, else from where it was recorded, and anything else is refused
    (`data.check_same_data`): a model evaluated on other data than it was trained on measures something
    else.  The embedded sample's notice is printed once per process, however often it is loaded.
    """
    source = config.source
    if recorded is not None:
        data_dir, source = data.recorded_location(recorded, data_dir)
    with warnings.catch_warnings():  # the notice is printed once below instead
        warnings.simplefilter("ignore", data.SampleDataWarning)
        dataset = data.load_dataset(config.dataset, data_dir, domain=tuple(config.domain),
                                    flatten=config.flatten, source=source)
    if recorded is not None:
        data.check_same_data(recorded, dataset.provenance)
    if dataset.notice and dataset.source not in _NOTICES_SHOWN:
        _NOTICES_SHOWN.add(dataset.source)
        print(dataset.notice, file=sys.stderr)
    if config.limit_train or config.limit_test:
        dataset = data.limit(dataset, n_train=config.limit_train or None, n_test=config.limit_test or None)
    return dataset


def recorded_data(workdir: str | pathlib.Path) -> data.Provenance | None:
    """The data ``workdir`` was trained on (its `DATA_RECORD`), or None if it records none."""
    path = pathlib.Path(workdir) / DATA_RECORD
    if not path.is_file():
        return None
    try:
        return data.Provenance.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise data.DataError(f"{path}: not valid JSON ({err})") from None


def record_data(workdir: pathlib.Path, dataset: data.Dataset, *, resuming: bool) -> None:
    """Records in ``workdir`` the data a training starts on; a resumed training must use the same data.

    Data given in memory (no ``provenance``) is not recorded.  A run that starts afresh (no checkpoint yet)
    replaces the record of an earlier start that saved nothing.
    """
    if dataset.provenance is None:
        return
    path = workdir / DATA_RECORD
    if resuming and path.is_file():
        data.check_same_data(recorded_data(workdir), dataset.provenance)
    elif not resuming:
        path.write_text(json.dumps(dataset.provenance.to_dict(), indent=2) + "\n")


def fit(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir: str | None = None,
        dataset: data.Dataset | None = None, stop_at_step: int | None = None,
        progress: bool = True) -> train.TrainState:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint if there is one (else starting
    from ``train.init_from``'s variables when that is set).

    At the start of every epoch the objective's ``on_epoch`` (if any) updates its state on the host.
    ``stop_at_step`` ends the run early (as an interruption would, after saving a checkpoint); running the
    same call again without it continues where it stopped.  Ctrl-C saves a checkpoint before exiting.
    ``progress``: a bar per epoch on a terminal or in a notebook, and one line per epoch on stderr (all that
    a log file or a pipe gets).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    experiment = Experiment(config, data_dir=data_dir, dataset=dataset)
    validation.check_batches(len(experiment.dataset.x_train), config.train.batch_size)  # else no step would run
    tc = config.train
    parallel = train.DataParallel.create(tc.num_devices, tc.batch_size)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", every_steps=tc.checkpoint_every_steps,
                                   keep=tc.keep_checkpoints)
    state = experiment.init_state()
    if ckpt.latest_step is None and tc.init_from:
        state = experiment.start_from(state)
    state = parallel.replicate(state)
    fingerprint = checkpoint.fingerprint(config.model, state)
    state = ckpt.restore_latest(state, fingerprint)
    main = distributed.is_main()  # of several processes, only process 0 writes the run's files and progress
    progress = progress and main
    if main:
        record_data(workdir, experiment.dataset, resuming=int(state.step) > 0)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    steps_per_epoch, total_steps = experiment.steps_per_epoch, experiment.total_steps
    step_fn = experiment.train_step(parallel)
    evaluate_fn = jax.jit(functools.partial(models.monitor_logits, experiment.model))
    test_metric = models.monitor_metric(experiment.model)
    ds = experiment.dataset
    bars = progress and interactive(sys.stderr)
    step = int(state.step)
    if step and main:
        print(f"resuming from checkpoint at step {step} (epoch {step // steps_per_epoch + 1})", file=sys.stderr)
    with StopRequest() as stop:
        try:
            while step < total_steps and (stop_at_step is None or step < stop_at_step) and not stop.requested:
                epoch, first_batch = divmod(step, steps_per_epoch)
                started = time.time()
                if first_batch == 0 and experiment.objective.on_epoch is not None:
                    state = parallel.replicate(state._replace(objective_state=experiment.objective.on_epoch(
                        *distributed.local((state.params, state.model_state, state.objective_state)), ds, epoch)))
                last_step = min(total_steps if stop_at_step is None else stop_at_step, (epoch + 1) * steps_per_epoch)
                batches = data.batches(ds.x_train, ds.y_train, tc.batch_size, seed=config.seed, epoch=epoch,
                                       start_batch=first_batch)
                state, step, train_metrics = run_epoch(
                    step_fn, state, step, batches,
                    parallel=parallel, checkpointer=ckpt, fingerprint=fingerprint, stop=stop, last_step=last_step,
                    log_every_steps=tc.log_every_steps,
                    bar=tqdm(total=steps_per_epoch, initial=first_batch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                             disable=not bars, leave=False, file=sys.stderr))
                if step % steps_per_epoch == 0:
                    ckpt.save(state, fingerprint, force=True)
                    record = {"epoch": epoch + 1, "step": step,
                              test_metric: accuracy(evaluate_fn, distributed.local(variables_of(state)), ds.x_test, ds.y_test),
                              "seconds": round(time.time() - started, 2), **train_metrics}
                    if main:
                        with open(workdir / "metrics.jsonl", "a") as log:
                            log.write(json.dumps(record) + "\n")
                    if progress:
                        print(epoch_line(record, tc.epochs), file=sys.stderr)
        finally:
            ckpt.save(state, fingerprint, force=True)
            ckpt.close()
    if stop.requested:
        if main:
            print(f"\ninterrupted at step {step}: checkpoint saved in {workdir / 'checkpoints'}; "
                  f"run the same command again to resume", file=sys.stderr)
        raise KeyboardInterrupt
    return state


def interactive(stream) -> bool:
    """Whether progress bars may redraw on ``stream``: a terminal, or a notebook (where `tqdm.auto` draws
    a widget).  A log file or a pipe gets one line per epoch instead of a carriage return per step."""
    in_notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)
    return in_notebook or bool(getattr(stream, "isatty", lambda: False)())


def epoch_line(record: dict, epochs: int) -> str:
    """``epoch 3/30: test accuracy 0.9712, train loss 0.0810, train accuracy 0.9755 (12.3 s)``; a
    randomised model's ``test monitor accuracy`` (`andor_jax.models.monitor_logits`) in place of the first."""
    test_key = "test_accuracy" if "test_accuracy" in record else "test_monitor_accuracy"
    parts = [f"{key.replace('_', ' ')} {record[key]:.4f}" for key in (test_key, "train_loss", "train_accuracy")
             if key in record]
    return (f"epoch {record['epoch']}/{epochs}: " + ", ".join(parts)
            + f" ({record['seconds']} s)")


def run_epoch(step_fn, state: train.TrainState, step: int, batches, *, parallel: train.DataParallel,
              checkpointer: checkpoint.Checkpointer, fingerprint: dict, stop: "StopRequest", last_step: int,
              log_every_steps: int, bar) -> tuple[train.TrainState, int, dict[str, float]]:
    """Runs ``step_fn`` from ``state`` (at ``step``) over ``batches`` until they end, ``last_step`` is
    reached or a stop is requested, saving checkpoints on the checkpointer's schedule.  Returns the state,
    its step and the training metrics averaged over the steps fetched for logging (every
    ``log_every_steps``-th and the last), prefixed ``train_``.  Only those steps wait for the device."""
    sums: dict[str, float] = {}
    fetched_steps = 0
    try:
        for x, y in batches:
            state, metrics = step_fn(state, *parallel.shard_batch(x, y))
            step += 1
            bar.update(1)
            finishing = step >= last_step or stop.requested
            if step % log_every_steps == 0 or finishing:
                fetched = jax.device_get(metrics)
                for key, value in fetched.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                fetched_steps += 1
                bar.set_postfix({key: f"{float(fetched[key]):.4f}" for key in ("loss", "accuracy") if key in fetched})
            checkpointer.save(state, fingerprint)
            if finishing:
                break
    except KeyboardInterrupt:  # a second signal: stop at once; the caller saves the last complete state
        stop.requested = True
    bar.close()
    return state, step, {f"train_{key}": round(value / max(fetched_steps, 1), 5) for key, value in sums.items()}


class StopRequest:
    """Within ``with StopRequest() as stop``, Ctrl-C (SIGINT) and SIGTERM (a job scheduler, `kill`) set
    ``stop.requested`` instead of raising, so that training stops between two steps and saves a
    checkpoint, never in the middle of writing one.  A second signal raises `KeyboardInterrupt` at once.
    Off the main thread no handler can be installed and signals keep their default behaviour."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(f"signal {signum}")
        self.requested = True

    def __enter__(self) -> "StopRequest":
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def variables_of(state: train.TrainState) -> dict:
    return {"params": state.params, **state.model_state}


def accuracy(apply_fn, variables: PyTree, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Fraction of ``x`` classified as ``y``, in batches (the last one may be smaller)."""
    correct = 0
    for xb, yb in data.eval_batches(x, y, batch_size):
        correct += int(jnp.sum(jnp.argmax(apply_fn(variables, xb), -1) == yb))
    return correct / len(x)


def check_unrecorded(workdir: pathlib.Path, config: ml_collections.ConfigDict, dataset: data.Dataset) -> None:
    """For a work directory without a data record (trained by an older version, or on data given in
    memory): refuses the embedded sample when it is only the offline fallback of ``source='auto'`` (the
    silent evaluation of a full-MNIST model on MNIST training images), and otherwise says that the data
    cannot be checked."""
    if dataset.provenance is not None and dataset.provenance.source == "embedded" and config.source != "embedded":
        raise data.DataMismatchError(
            f"{workdir} does not record the data it was trained on ({DATA_RECORD} is missing) and no data directory "
            f"was found, so only the embedded 5,000-image sample is at hand; pass --data-dir PATH to the data it "
            f"was trained on")
    print(f"note: {workdir} does not record the data it was trained on; using {dataset.source}, "
          f"which cannot be checked to be that data", file=sys.stderr)


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a work directory was trained with (its ``config.json``)."""
    config_path = pathlib.Path(workdir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: train first with `andor-jax train --workdir {workdir}`")
    try:
        return ml_collections.ConfigDict(json.loads(config_path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None


def load_trained(workdir: str | pathlib.Path, *, data_dir: str | None = None,
                 dataset: data.Dataset | None = None, with_data: bool = True,
                 model_settings: dict | None = None) -> tuple[Experiment, dict]:
    """The experiment of ``workdir`` (from its ``config.json``, with the inference settings
    ``model_settings`` applied: `models.with_inference_settings`) and the variables of its latest checkpoint.

    Its data set is ``dataset`` if given; else, with ``with_data``, the data the work directory was trained
    on (`load_data` with its record: other data is refused); else a blank stand-in (`data.blank`), for a
    caller that brings its own inputs: restoring a checkpoint needs no data set.
    """
    workdir = pathlib.Path(workdir)
    config = read_config(workdir)
    config.model = models.with_inference_settings(config.model, model_settings)
    if dataset is None and with_data:
        recorded = recorded_data(workdir)
        dataset = load_data(config.data, data_dir, recorded=recorded)
        if recorded is None:
            check_unrecorded(workdir, config.data, dataset)
    elif dataset is None:
        dataset = data.blank(config.data.dataset, domain=tuple(config.data.domain), flatten=config.data.flatten,
                             count=config.train.batch_size)
    experiment = Experiment(config, dataset=dataset)
    state = experiment.init_state()
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    try:
        variables = ckpt.restore_latest_variables(state, checkpoint.fingerprint(config.model, state))
    finally:
        ckpt.close()
    return experiment, variables