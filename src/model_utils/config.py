"""One configuration loader for every entry script: YAML file, then command-line overrides.

A config file has up to three YAML documents: 1 = values, 2 = help strings, 3 (optional) = allowed
values per key. Every key of ``SCHEMA`` is also a ``--key`` flag; its type is the schema's type,
which the YAML value must match. Precedence: YAML < command line. Everything is validated here,
once; a bad value raises ``ConfigError`` with one line that names the key, the value and what is
allowed. Nothing in this module reads ``sys.argv`` unless ``load_config`` is called without
``argv``.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import textwrap
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from src.atomic_io import atomic_write_text
from src.augment import AUTO_AUGMENT_FORMS, parse_auto_augment
from src.errors import ArgumentParser, ConfigError
from src.logger import logger

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = REPO_ROOT / "cifar10_config.yaml"

# Every key a config file holds, with its type. Configs are data: adding a key means adding it
# here and to each shipped YAML (tests/test_config.py checks they agree).
SCHEMA: dict[str, Any] = {
    # ModelArts and file locations
    "enable_modelarts": bool,
    "data_url": str,
    "train_url": str,
    "checkpoint_url": str,
    "data_path": str,
    "output_path": str,
    "load_path": str,
    "need_modelarts_dataset_unzip": bool,
    "modelarts_dataset_unzip_name": str,
    "modelarts_sync_timeout": int,
    "device_target": str,
    # data
    "dataset_name": str,
    "train_data_path": str,
    "val_data_path": str,
    "num_parallel_workers": int,
    "image_height": int,
    "image_width": int,
    "batch_size": int,
    # training recipes beyond upstream's (all off by default)
    "auto_augment": str,
    "random_erasing": float,
    "mixup_alpha": float,
    "cutmix_alpha": float,
    "mixup_switch_prob": float,
    "ema_decay": float,
    "clip_grad_norm": float,
    "grad_accumulation_steps": int,
    # network
    "num_classes": int,
    "dropout_rate": float,
    "compiled_max_pool": bool,
    "compiled_conv": bool,
    "fold_batchnorm": bool,
    "channels_last": bool,
    # training
    "pre_trained": str,
    "epoch_size": int,
    "lr_scheduler": str,
    "lr_init": float,
    "lr_epochs": list[int],
    "lr_gamma": float,
    "eta_min": float,
    "T_max": int,
    "warmup_epochs": int,
    "momentum": float,
    "weight_decay": float,
    "no_decay_bn_bias": bool,
    "compiled_optimizer": bool,
    "use_label_smooth": bool,
    "label_smooth_factor": float,
    "is_dynamic_loss_scale": bool,
    "loss_scale": float,
    "amp_level": str,
    "dataset_sink_mode": bool,
    "seed": int,
    "log_interval": int,
    "save_checkpoint_epochs": int,
    "keep_checkpoint_max": int,
    "ckpt_save_dir": str,
    # resume, fine-tuning, evaluation during training
    "resume": str,
    "resume_exact_data": bool,
    "freeze_backbone": bool,
    "backbone_lr_scale": float,
    "eval_interval": int,
    # evaluation
    "checkpoint_path": str,
    # export
    "ckpt_file": str,
    "file_name": str,
    "file_format": str,
    "export_batch_size": int,
    # prediction
    "predict_images": list[str],
    "predict_model": str,
    "class_names_file": str,
    "top_k": int,
}

# The keys of the upstream model zoo's own YAML files (mindspore-ai/models, research/cv/googlenet), which
# every config must hold. The other keys of SCHEMA are this package's own: a file without them (an
# upstream one) takes them from the shipped config of its dataset and device (SHIPPED_CONFIGS).
UPSTREAM_KEYS = (
    "enable_modelarts", "data_url", "train_url", "checkpoint_url", "data_path", "output_path", "load_path",
    "device_target", "need_modelarts_dataset_unzip", "modelarts_dataset_unzip_name", "dataset_name",
    "pre_trained", "num_classes", "lr_init", "batch_size", "epoch_size", "momentum", "weight_decay",
    "image_height", "image_width", "train_data_path", "val_data_path", "keep_checkpoint_max",
    "checkpoint_path", "ckpt_save_dir", "ckpt_file", "file_name", "file_format",
)
# Keys of upstream's files that mean nothing here: accepted and ignored, with one info line. (The device
# comes from DEVICE_ID / the launcher; export names its file from file_name and file_format; profiling
# is not wired in.)
UPSTREAM_IGNORED = ("name", "onnx_filename", "air_filename", "device_id", "enable_profiling", "width", "height")
SHIPPED_CONFIGS = {("cifar10", "CPU"): REPO_ROOT / "cifar10_config_cpu.yaml",
                   ("cifar10", "other"): REPO_ROOT / "cifar10_config.yaml",
                   ("imagenet", "other"): REPO_ROOT / "imagenet_config.yaml"}

# Allowed values that hold for every config; a file's third document may narrow them further.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset_name": ("cifar10", "imagenet"),
    "device_target": ("Ascend", "GPU", "CPU"),
    "file_format": ("MINDIR", "ONNX", "AIR"),
    "lr_scheduler": ("step", "exponential", "cosine_annealing"),
    "amp_level": ("O0", "O1", "O2", "O3"),
}


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


def _unit_interval(value: float) -> bool:
    return 0 <= value < 1


def _increasing_positive(values: list[int]) -> bool:
    return all(v > 0 for v in values) and all(a < b for a, b in zip(values, values[1:], strict=False))


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        key: (_positive, "a value > 0")
        for key in (
            "batch_size", "epoch_size", "image_height", "image_width",
            "num_parallel_workers", "lr_init", "T_max", "loss_scale", "log_interval",
            "save_checkpoint_epochs", "keep_checkpoint_max", "export_batch_size",
            "modelarts_sync_timeout", "top_k", "grad_accumulation_steps",
        )
    },
    **{
        key: (_non_negative, "a value >= 0")
        for key in ("eta_min", "warmup_epochs", "momentum", "weight_decay", "seed", "eval_interval",
                    "cutmix_alpha", "clip_grad_norm")
    },
    # MindSpore 2.10's MixUpBatch fails on a batch whose two Gamma(alpha) draws are both 0 in float32 ("addition of
    # variable(x1 and x2) of Gamma should not be 0"): about 1 batch in 600 at alpha 0.2, 1 in 20,000 at 0.3, none
    # in 20,000 at 0.4; an operator inside the pipeline cannot draw again.
    "mixup_alpha": (lambda v: v == 0 or v >= 0.4, "0 (off) or a value >= 0.4 (MindSpore 2.10's MixUpBatch fails "
                    "on some batches at smaller alphas)"),
    "auto_augment": (lambda v: parse_auto_augment(v) is not None, AUTO_AUGMENT_FORMS),
    "random_erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1] (0 = off)"),
    "mixup_switch_prob": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "ema_decay": (_unit_interval, "a value in [0, 1), e.g. 0.9999 (0 = off)"),
    "num_classes": (lambda v: v >= 2, "at least 2 classes"),
    "dropout_rate": (_unit_interval, "a value in [0, 1)"),
    "label_smooth_factor": (_unit_interval, "a value in [0, 1)"),
    "lr_gamma": (lambda v: 0 < v <= 1, "a value in (0, 1]"),
    "backbone_lr_scale": (lambda v: 0 < v <= 1, "a value in (0, 1]: the backbone's share of the learning rate"),
    "lr_epochs": (_increasing_positive, "increasing positive epochs, e.g. 30,60,90"),
}

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


class Config:
    """The resolved configuration: attribute access to every key, plus where it came from."""

    def __init__(self, values: dict[str, Any], config_path: Path) -> None:
        self.__dict__.update(values)
        self.config_path = config_path

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SCHEMA}

    def summary(self, width: int = 110) -> str:
        """The merged config in a few wrapped lines of ``key=value``."""
        pairs = " ".join(f"{key}={_format(value)}" for key, value in self.to_dict().items())
        body = textwrap.fill(pairs, width=width, initial_indent="  ", subsequent_indent="  ",
                             break_on_hyphens=False)
        return f"config {self.config_path}:\n{body}"

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved values as a YAML file that ``load_config`` reads back."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _format(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value == "":
        return "''"
    return str(value)


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        item = {int: "integers", float: "numbers", str: "strings"}[typing.get_args(kind)[0]]
        return f"a comma-separated list of {item}"
    return {bool: "a boolean (True/False/true/false/1/0)", int: "an integer",
            float: "a number", str: "a string"}[kind]


def _convert_text(kind: Any, text: str) -> Any:
    """Convert a command-line string to ``kind``; raise ValueError when it does not fit."""
    if typing.get_origin(kind) is list:
        item_kind = typing.get_args(kind)[0]
        text = text.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [_convert_text(item_kind, part) for part in text.split(",") if part.strip()]
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(text)
    if kind is int:
        return int(text, 10)
    if kind is float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(text)
        return number
    return text


def _check_yaml_value(kind: Any, value: Any) -> Any:
    """Check a value read from YAML against ``kind``; return it (ints widened to floats)."""
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise ValueError(value)
        return [_check_yaml_value(typing.get_args(kind)[0], item) for item in value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ValueError(value)
    if kind is bool and isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if not isinstance(value, kind):
        raise ValueError(value)
    return value


def _read_yaml(path: Path) -> tuple[dict, dict, dict]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config_path=<a .yaml file>")
    try:
        with open(path, encoding="utf-8") as handle:
            documents = [doc for doc in yaml.safe_load_all(handle)]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}: {problem}{where}") from None
    if not documents or not isinstance(documents[0], dict):
        raise ConfigError(f"config file {path}: the first YAML document must map keys to values")
    if len(documents) > 3:
        raise ConfigError(f"config file {path}: expected at most 3 YAML documents "
                          f"(values, help, choices), found {len(documents)}")
    values, helps, choices = (documents + [{}, {}])[:3]
    for name, doc in (("help", helps), ("choices", choices)):
        if doc is not None and not isinstance(doc, dict):
            raise ConfigError(f"config file {path}: the {name} document must map keys to text")
    return values, helps or {}, choices or {}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, SCHEMA, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _build_parser(config_path: Path, helps: dict, choices: dict, defaults: dict) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description=f"Keys and defaults from {config_path}; any key can be overridden as --key=value.",
        allow_abbrev=False, add_help=True)
    parser.add_argument("--config_path", default=str(config_path), help="YAML config file")
    for key, kind in SCHEMA.items():
        allowed = choices.get(key)
        text = str(helps.get(key, "")).strip().replace("%", "%%")
        extra = f" Choices: {', '.join(map(str, allowed))}." if allowed else ""
        parser.add_argument(f"--{key}", default=None, metavar=key.upper(),
                            help=f"{text} ({_type_name(kind)}; default {_format(defaults.get(key))}).{extra}")
    return parser


def _validate(key: str, value: Any, choices: dict, source: str) -> None:
    allowed = choices.get(key)
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{key}={_format(value)} ({source}) is not allowed; "
                          f"expected one of: {', '.join(map(str, allowed))}")
    rule = RULES.get(key)
    if rule is not None and not rule[0](value):
        raise ConfigError(f"{key}={_format(value)} ({source}) is invalid; expected {rule[1]}")


def _check_combinations(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Keys that are valid alone but not together."""
    if values["ema_decay"] > 0 and values["dataset_sink_mode"]:
        raise ConfigError(f"ema_decay={_format(values['ema_decay'])} ({sources['ema_decay']}) needs "
                          "dataset_sink_mode=False (the average is updated after every step); expected "
                          "dataset_sink_mode=False or ema_decay=0")
    if values["is_dynamic_loss_scale"]:
        for key, off in (("ema_decay", 0.0), ("clip_grad_norm", 0.0), ("grad_accumulation_steps", 1)):
            if values[key] != off:
                raise ConfigError(f"{key}={_format(values[key])} ({sources[key]}) is not supported with "
                                  f"is_dynamic_loss_scale=True; expected {key}={off} or a fixed loss_scale "
                                  "(is_dynamic_loss_scale=False)")


def _place_outputs_under(values: dict[str, Any], output_path: str) -> None:
    """On ModelArts only output_path is uploaded: relative checkpoint and export paths go under it."""
    for key in ("ckpt_save_dir", "file_name"):
        values[key] = os.path.abspath(os.path.join(output_path, values[key]))


def _upstream_pre_trained(values: dict[str, Any], source: str) -> None:
    """Upstream's ``pre_trained`` is a boolean meaning "start from checkpoint_path"; here it names the
    checkpoint itself ('' = random initialisation). True/False, in the file or on the command line,
    are read upstream's way."""
    flag = str(values["pre_trained"]).lower()
    if flag not in ("true", "false"):
        return
    values["pre_trained"] = values["checkpoint_path"] if flag == "true" else ""
    if flag == "true":
        logger.info("pre_trained=True (%s, upstream's form): training starts from checkpoint_path %s", source,
                    values["pre_trained"])


def _fill_own_keys(values: dict[str, Any], config_path: Path, device_override: str | None) -> None:
    """Every upstream key must be in ``values``; this package's own keys a file lacks (an upstream
    file) come from the shipped config of its dataset and device, named in one info line."""
    missing = [key for key in SCHEMA if key not in values]
    required = [key for key in missing if key in UPSTREAM_KEYS]
    if required:
        raise ConfigError(f"config file {config_path}: missing key '{required[0]}' ({_type_name(SCHEMA[required[0]])})")
    if not missing:
        return
    device = device_override or values["device_target"]
    source = SHIPPED_CONFIGS.get((str(values["dataset_name"]), "CPU" if device == "CPU" else "other"),
                                 SHIPPED_CONFIGS.get((str(values["dataset_name"]), "other"), DEFAULT_CONFIG_PATH))
    shipped, _, _ = _read_yaml(source)
    values.update({key: shipped[key] for key in missing})
    logger.info("config file %s: %d keys of this package not in it, taken from this package's %s: %s", config_path.name,
                len(missing), source.name, ", ".join(missing))


def load_config(argv: Sequence[str] | None = None, default_config: str | os.PathLike | None = None) -> Config:
    """Read the YAML named by ``--config_path`` and apply ``--key=value`` overrides from ``argv``.

    ``argv=None`` reads ``sys.argv[1:]``; ``default_config`` is the file used when no
    ``--config_path`` is given (the CIFAR-10 Ascend/GPU config by default).
    """
    pre = ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config_path", default=str(default_config or DEFAULT_CONFIG_PATH))
    pre.add_argument("--device_target", default=None)
    known, _ = pre.parse_known_args(argv)
    config_path = Path(known.config_path).expanduser().resolve()
    values, helps, file_choices = _read_yaml(config_path)

    unknown = [key for key in values if key not in SCHEMA and key not in UPSTREAM_IGNORED]
    if unknown:
        raise ConfigError(f"config file {config_path}: unknown key '{unknown[0]}'{_suggest(unknown[0])}")
    ignored = [key for key in values if key in UPSTREAM_IGNORED]
    if ignored:
        logger.info("config file %s: upstream keys that mean nothing here, ignored: %s", config_path.name,
                    ", ".join(ignored))
    values = {key: value for key, value in values.items() if key in SCHEMA}
    if isinstance(values.get("pre_trained"), bool):
        values["pre_trained"] = str(values["pre_trained"])
    _fill_own_keys(values, config_path, known.device_target)
    choices = dict(CHOICES)
    for key, allowed in file_choices.items():
        if key in UPSTREAM_IGNORED:
            continue
        if key not in SCHEMA or not isinstance(allowed, list):
            raise ConfigError(f"config file {config_path}: choices for '{key}' must be a list of values of a known key")
        choices[key] = tuple(allowed)

    resolved: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, kind in SCHEMA.items():
        try:
            resolved[key] = _check_yaml_value(kind, values[key])
        except ValueError:
            raise ConfigError(f"{key}={values[key]!r} in {config_path.name} has the wrong type; "
                              f"expected {_type_name(kind)}") from None
        sources[key] = config_path.name

    parser = _build_parser(config_path, helps, choices, resolved)
    args, extras = parser.parse_known_args(argv)
    if extras:
        flag = extras[0]
        name = flag.lstrip("-").split("=", 1)[0]
        hint = _suggest(name) if flag.startswith("--") else " (options are written --key=value)"
        raise ConfigError(f"unknown option '{flag}'{hint}; run with --help to list the keys of {config_path.name}")

    for key, kind in SCHEMA.items():
        text = getattr(args, key)
        if text is None:
            continue
        try:
            resolved[key] = _convert_text(kind, text)
        except ValueError:
            raise ConfigError(f"--{key}={text!r} has the wrong type; expected {_type_name(kind)}") from None
        sources[key] = "command line"

    _upstream_pre_trained(resolved, sources["pre_trained"])
    for key, value in resolved.items():
        _validate(key, value, choices, sources[key])
    _check_combinations(resolved, sources)
    if resolved["enable_modelarts"]:
        _place_outputs_under(resolved, resolved["output_path"])
    return Config(resolved, config_path)
