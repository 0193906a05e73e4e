"""Shared fixtures.  Before JAX is imported: four virtual CPU devices are forced (unless the caller chose
otherwise) so that the data-parallel path is exercised; XLA compiles without its expensive optimisation
passes, with its older CPU emitters (not the MLIR fusion emitters) and in one LLVM module (the suite's
models are tiny, so compiling, not running, is most of its time: the passes cost about 4x for the CARSO
tests, the emitters and the split 506 -> 300 s of CPU for the whole suite; `optimised` restores the passes
for the few tests that run a step many times); and one persistent
compilation cache serves the whole run (both xdist workers and the command-line subprocesses inherit the
directory, so a program compiled by one test is loaded by the next; about a third less CPU time), removed
when the process that created it exits."""
import atexit
import gzip
import os
import shutil
import struct
import tempfile
import uuid

FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                      "--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ["XLA_FLAGS"] = " ".join([os.environ["XLA_FLAGS"], *(flag for flag in FAST_COMPILE_FLAGS
                                                                if flag.split("=")[0] not in os.environ["XLA_FLAGS"])])
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"andor_jax_tests_{uuid.uuid4().hex}")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FULLY_OPTIMISED = {"xla_backend_optimization_level": 2, "xla_llvm_disable_expensive_passes": False}


def subprocess_environment(devices: int | None = None) -> dict[str, str]:
    """The environment for a Python subprocess of a test: this one's, with XLA's fast compilation and
    ``devices`` virtual CPU devices (default: XLA's own, one)."""
    flags = [*FAST_COMPILE_FLAGS] + ([f"--xla_force_host_platform_device_count={devices}"] if devices else [])
    return {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}


def optimised(jitted, *example_args):
    """``jitted`` compiled for ``example_args`` with XLA's full optimisation, for the few tests whose time is
    spent running a step many times rather than compiling it (2x faster there)."""
    return jitted.lower(*example_args).compile(FULLY_OPTIMISED)


def trained_blob_mlp(classes: int, count: int, spread: float, centres_in: tuple[float, float], dim: int = 16):
    """``(logits_fn, x, y)``: a ``dim``-32-``classes`` tanh MLP trained by 150 Adam steps (lr 0.02) on ``count``
    points of ``classes`` Gaussian blobs (standard deviation ``spread``, centres uniform in ``centres_in``),
    clipped to [0, 1]^dim; a small model attacks can be compared on."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    def mlp(params, x):
        (kernel, bias), (out_kernel, out_bias) = params
        return jnp.tanh(x @ kernel + bias) @ out_kernel + out_bias

    centres = jax.random.uniform(jax.random.PRNGKey(10), (classes, dim), minval=centres_in[0], maxval=centres_in[1])
    y = jnp.arange(count) % classes
    x = jnp.clip(centres[y] + spread * jax.random.normal(jax.random.PRNGKey(11), (count, dim)), 0.0, 1.0)
    keys = jax.random.split(jax.random.PRNGKey(12))
    params = ((jax.random.normal(keys[0], (dim, 32)) / 4, jnp.zeros(32)),
              (jax.random.normal(keys[1], (32, classes)) / 6, jnp.zeros(classes)))
    optimiser = optax.adam(0.02)

    @jax.jit
    def train(params):
        def step(_, carry):
            params, state = carry
            grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(mlp(p, x), y).mean())(params)
            updates, state = optimiser.update(grads, state)
            return optax.apply_updates(params, updates), state

        return jax.lax.fori_loop(0, 150, step, (params, optimiser.init(params)))[0]

    return jax.jit(functools.partial(mlp, train(params))), x, y


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class is written as a bright 7x7 block at one of 10 places, plus noise:
    learnable in a few steps, so tests can check that training and attacks do something real."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[index, 3 + 12 * row: 10 + 12 * row, 1 + 5 * col: 6 + 5 * col] = 230
    return images, labels


def write_idx(path, array: np.ndarray) -> None:
    magic = 0x801 if array.ndim == 1 else 0x803
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def synthetic_mnist_dir(tmp_path_factory):
    """A directory of gzipped IDX files in MNIST's layout: 1,000 training and 300 test images."""
    directory = tmp_path_factory.mktemp("synthetic_mnist")
    for prefix, count, seed in (("train", 1000, 0), ("t10k", 300, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def small_mlp_config(**train_overrides):
    """A 784-32-10 ReLU MLP trained 2 epochs in batches of 40 on a data directory (``data.source = "dir"``),
    checkpointing every 10 steps: the run the engine's tests train, resume and compare."""
    from andor_jax import config as config_lib  # after XLA_FLAGS is set above

    config = config_lib.base_config()
    config.model.name = "mlp"
    config.model.hidden = (32,)
    config.train.epochs = 2
    config.train.batch_size = 40
    config.train.checkpoint_every_steps = 10
    config.train.log_every_steps = 5
    config.data.source = "dir"
    for key, value in train_overrides.items():
        config.train[key] = value
    return config
