"""Experiment configuration: the defaults every config starts from, loading config files, and
command-line overrides."""
import ast
import importlib
import importlib.util
import pathlib

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 1

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "mnist"          # mnist | fashion_mnist
    config.data.domain = (0.0, 1.0)        # (0, 1) or (-1, 1): attacks and bounds clip to it
    config.data.flatten = True             # (n, 784) rather than (n, 28, 28, 1)
    config.data.source = "auto"            # auto | dir | cache | download | embedded | tfds
    config.data.limit_train = 0            # 0: all training examples
    config.data.limit_test = 0             # 0: all test examples

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 30
    config.train.batch_size = 100
    config.train.loss = "cross_entropy"    # cross_entropy | squared_error
    config.train.objective = "supervised"  # how gradients are made (train.OBJECTIVES)
    config.train.gradient_transforms = ""  # comma-separated, before the optimiser (train.GRADIENT_TRANSFORMS)
    config.train.optimizer = "adadelta"    # adadelta | adam | radam | sgd
    config.train.learning_rate = 1.0
    config.train.momentum = 0.9            # sgd only
    config.train.rho = 1.0                 # pseudo-gradient mixing (layers that have one): 1 pseudo, 0 true
    config.train.rho_final = ml_collections.config_dict.placeholder(float)  # set: linear decay to it
    config.train.num_devices = ml_collections.config_dict.placeholder(int)  # None: all local devices
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 20

    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.attacks = "fgsm,ifgsm,pgd,apgd-ce,apgd-dlr,deepfool,square"
    config.evaluate.eps = "0.05:0.5:0.05"
    config.evaluate.limit = 1000           # examples attacked; 0: the whole test set
    config.evaluate.batch_size = 500
    config.evaluate.attack_settings = ml_collections.ConfigDict()  # e.g. {"pgd": {"restarts": 1}}
    config.evaluate.pseudo_gradient_attacks = False  # also run every attack with pseudo-gradients ([psd])
    config.evaluate.certify = False
    return config


# ------------------------------------------------------------------------------------ loading configs

def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config named by ``spec``: a path to a ``.py`` file, or the name of a bundled config
    (``quickstart``, ``relu_mlp_mnist``, ... in ``andor_jax.configs``)."""
    path = pathlib.Path(spec)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {spec!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"_andor_jax_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"andor_jax.configs.{spec}")
        except ModuleNotFoundError as err:
            raise ValueError(f"no config named {spec!r}; bundled configs: {', '.join(bundled_configs())}, "
                             f"or give a path to a .py file") from err
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {spec!r} defines no get_config()")
    return module.get_config()


def bundled_configs() -> list[str]:
    import andor_jax.configs as package

    return sorted(p.stem for p in pathlib.Path(package.__file__).parent.glob("*.py") if p.stem != "__init__")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``key.path=value`` overrides (from ``--config.key.path=value`` on the command line).

    Values are parsed as Python literals where possible (``3``, ``0.5``, ``(512, 512)``, ``True``), else
    taken as strings.  An unknown key or a value of the wrong type is an error naming it.
    """
    config = config.copy_and_resolve_references()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"config override {item!r} must look like key.path=value")
        *parents, leaf = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ValueError(f"unknown config key {'.'.join(parents[:depth + 1])!r} in override {item!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(node.keys()))}")
        value = parse_value(text)
        try:
            node[leaf] = value
        except TypeError as err:
            raise ValueError(f"config key {key!r}: cannot set {value!r}: {err}") from err
    return config


def parse_value(text: str):
    """A command-line value as a Python literal where it is one (``3``, ``0.5``, ``(1, 2)``, ``true``),
    else the string itself; lists become tuples."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() == "none":
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_eps(text: str) -> list[float]:
    """``0.05:0.5:0.05`` (start:stop:step, stop included) or ``0.1,0.3``; each value must be >= 0."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError("step must be positive")
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"cannot read eps grid {text!r} (use start:stop:step or a,b,c): {err}") from err
    if not values or any(v < 0 for v in values):
        raise ValueError(f"eps grid {text!r} must list values >= 0")
    return values
