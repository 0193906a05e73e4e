"""Experiment configuration: the defaults every config starts from, loading config files, and
command-line overrides."""
import ast
import importlib
import importlib.util
import pathlib

import ml_collections

from andor_jax import validation


def base_config() -> ml_collections.ConfigDict:
    """The defaults every config starts from.  Every key a run reads is declared here (or, for an
    objective's own block such as ``train.andor``, by the configs that use it), so that every key can be
    overridden on the command line and appears in the run's ``config.json``.

    Lists are lists: ``train.gradient_transforms``, ``train.trainable`` and ``evaluate.attacks`` of names,
    ``evaluate.eps`` of floats.  Three meanings of "rho" have three names: ``train.psd_mix`` (the
    pseudo-gradient mix of layers that have one), ``train.adadelta_rho`` (AdaDelta's decay) and APGD's own
    setting among the attack settings; AdaDelta's epsilon is ``train.adadelta_eps``, the perturbation
    budgets are ``evaluate.eps``.
    """
    config = ml_collections.ConfigDict()
    config.seed = 1
    config.name = ""                       # the config as loaded, e.g. "quickstart:small" (set by load_config)

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "mnist"          # mnist | fashion_mnist
    config.data.domain = (0.0, 1.0)        # (0, 1) or (-1, 1): attacks and bounds clip to it
    config.data.flatten = True             # (n, 784) rather than (n, 28, 28, 1)
    config.data.source = "auto"            # auto | dir | cache | download | embedded
    config.data.limit_train = 0            # 0: all training examples
    config.data.limit_test = 0             # 0: all test examples

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 30
    config.train.batch_size = 100
    config.train.loss = "cross_entropy"    # cross_entropy | squared_error (objectives.losses)
    config.train.objective = "supervised"  # module andor_jax/objectives/<name>.py (or a dotted module name)
    config.train.gradient_transforms = []  # before the optimiser: "clip_by_global_norm" or "package.module:factory"
    config.train.max_grad_norm = 1.0       # clip_by_global_norm
    config.train.optimizer = "adadelta"    # adadelta | adam | radam | sgd
    config.train.learning_rate = 1.0
    config.train.learning_rate_schedule = "constant"  # constant | cosine | linear: to 0 over the run's steps
    config.train.momentum = 0.9            # sgd only (0: none)
    config.train.nesterov = False          # sgd only
    config.train.adadelta_rho = 0.9        # AdaDelta's decay of its running averages
    config.train.adadelta_eps = 1e-6       # AdaDelta's epsilon
    config.train.psd_mix = 1.0             # pseudo-gradient mix (layers that have one): 1 pseudo, 0 true
    config.train.psd_mix_final = ml_collections.config_dict.placeholder(float)  # set: linear change to it
    config.train.trainable = []            # parameter path prefixes that train, e.g. ["purifier"]; []: all
    config.train.init_from = ""            # a work directory whose latest params / model_state start the run
    config.train.init_from_into = ""       # the sub-tree they go into, e.g. "classifier"; "": the whole tree
    config.train.num_devices = ml_collections.config_dict.placeholder(int)  # None: all local devices
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 20

    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.attacks = ["fgsm", "ifgsm", "pgd", "apgd-ce", "apgd-dlr", "deepfool", "square"]
    config.evaluate.eps = validation.number_range(0.05, 0.5, 0.05)
    config.evaluate.limit = 1000           # examples attacked; 0: the whole test set
    config.evaluate.batch_size = 500
    config.evaluate.attack_settings = ml_collections.ConfigDict()  # e.g. {"pgd": {"restarts": 1}}
    config.evaluate.pseudo_gradient_attacks = False  # also run every attack with pseudo-gradients ([psd])
    config.evaluate.certify = False
    config.evaluate.eot_draws = 0          # EOT draws per gradient; 0: 20 for randomised models, 1 otherwise
    config.evaluate.verdict_draws = 10     # randomised models: worst case over this many forward passes
    config.evaluate.randomness = "fresh"   # fresh | fixed: attacks see the model's key held fixed
    config.evaluate.attack_model = ""      # "": the whole model; a sub-network name: transfer setting
    config.evaluate.suite = ""             # "": evaluate.attacks; standard | plus | rand | paper (attacks.suites)
    config.evaluate.convergence_check = True       # attack the examples still standing with twice the budget
    config.evaluate.convergence_threshold = 0.005  # ... and flag "not converged" above this fraction broken
    config.evaluate.convergence_attack = ""        # the attack the check repeats; "": the largest budget
    config.evaluate.nested_eps = False     # an example broken at a smaller eps is not attacked at a larger one
    return config


def check_variant(arg: str | None, variants: tuple[str, ...]) -> None:
    """Raises a ValueError unless ``arg`` (the variant of ``get_config(arg)``) is None or one of
    ``variants``."""
    if arg is not None and arg not in variants:
        known = ", ".join(variants) if variants else "none"
        raise ValueError(f"unknown config variant {arg!r}; variants of this config: {known}")


def small_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``small`` variant shared by the bundled configs, for tests, CI and notebooks: 2 epochs of 500
    training images, FGSM and PGD on 100 test images at two eps, checkpoints every 20 steps.  Widths and
    depths are the config's own business."""
    config.data.limit_train = 500
    config.data.limit_test = 200
    config.train.epochs = 2
    config.train.checkpoint_every_steps = 20
    config.train.log_every_steps = 5
    config.evaluate.attacks = ["fgsm", "pgd"]
    config.evaluate.eps = [0.1, 0.3]
    config.evaluate.limit = 100
    config.evaluate.batch_size = 100
    config.evaluate.attack_settings = ml_collections.ConfigDict()
    return config


# ------------------------------------------------------------------------------------ loading configs

def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config named by ``spec``: a path to a ``.py`` file or the name of a bundled config (``quickstart``,
    ``relu_mlp_mnist``, ... in ``andor_jax.configs``), optionally followed by ``:VARIANT`` (e.g.
    ``quickstart:small``), which is passed to the file's ``get_config(arg)``."""
    source, variant = split_variant(spec)
    module = config_module(source)
    config = module.get_config(variant) if variant is not None else module.get_config()
    config.name = spec
    return config


def split_variant(spec: str) -> tuple[str, str | None]:
    """``"quickstart:small"`` -> ``("quickstart", "small")``; ``"quickstart"`` -> ``("quickstart", None)``."""
    source, colon, variant = spec.rpartition(":")
    if colon and source and variant and not any(c in variant for c in "/\\."):
        return source, variant
    return spec, None


def config_module(source: str):
    """The module of a config file (a path) or of a bundled config (a name); it must define ``get_config``."""
    path = pathlib.Path(source)
    if path.suffix == ".py" or path.is_file():  # a folder that happens to bear a config's name is no config file
        if not path.is_file():
            raise FileNotFoundError(f"config file {source!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"_andor_jax_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"andor_jax.configs.{source}")
        except ModuleNotFoundError as err:
            raise ValueError(f"no config named {source!r}; bundled configs: {', '.join(bundled_configs())}, "
                             f"or give a path to a .py file") from err
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {source!r} defines no get_config()")
    return module


def variants(source: str) -> tuple[str, ...]:
    """The variants a config file declares (its ``VARIANTS``, e.g. ``("small",)``)."""
    return tuple(getattr(config_module(source), "VARIANTS", ()))


def bundled_configs() -> list[str]:
    import andor_jax.configs as package

    return sorted(p.stem for p in pathlib.Path(package.__file__).parent.glob("*.py") if p.stem != "__init__")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``key.path=value`` overrides (from ``--config.key.path=value`` on the command line).

    Values are parsed as Python literals where possible (``3``, ``0.5``, ``(512, 512)``, ``True``), else
    taken as strings; a key whose value is a list takes a list in the syntax of `parse_list`
    (``--config.evaluate.attacks=fgsm,pgd``, ``--config.evaluate.eps=0.1:0.3:0.1``).  An unknown key or a
    value of the wrong type is an error naming it.
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
        try:
            value = parse_list(text) if isinstance(node[leaf], list) else parse_value(text)
        except validation.InvalidInput as err:
            raise validation.InvalidInput(f"config key {key}: {err}") from None
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


def parse_list(text: str) -> list:
    """A list-valued key on the command line: a Python list literal (``[0.1, 0.3]``), ``start:stop:step``
    (numbers, stop included: `andor_jax.validation.number_range`), or comma-separated items each read by
    `parse_value` (``fgsm,pgd``, ``0.1,0.3``); the empty string is the empty list."""
    value = parse_value(text)
    if isinstance(value, (tuple, list)):
        return list(value)
    parts = text.split(":")
    if len(parts) == 3 and all(isinstance(parse_value(p), (int, float)) for p in parts):
        return validation.number_range(*(float(p) for p in parts))
    return [parse_value(item.strip()) for item in text.split(",") if item.strip()]
