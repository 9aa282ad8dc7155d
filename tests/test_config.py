"""The config loader: every shipped YAML, typed overrides, and one-line errors for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from src.errors import ConfigError
from src.model_utils.config import SCHEMA, load_config
from tests.conftest import CPU_CONFIG, REPO, assert_user_error, run_script

SHIPPED = sorted(REPO.glob("*_config*.yaml"))


def test_four_configs_are_shipped():
    assert [p.name for p in SHIPPED] == ["cifar10_config.yaml", "cifar10_config_cpu.yaml", "cifar10_config_plus.yaml",
                                         "imagenet_config.yaml"]


RECIPES_OFF = {"auto_augment": "none", "random_erasing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
               "ema_decay": 0.0, "clip_grad_norm": 0.0, "grad_accumulation_steps": 1}


@pytest.mark.parametrize("name", ["cifar10_config.yaml", "cifar10_config_cpu.yaml", "imagenet_config.yaml"])
def test_recipes_are_off_in_the_upstream_equivalent_configs(name):
    config = load_config([f"--config_path={REPO / name}"])
    assert {key: getattr(config, key) for key in RECIPES_OFF} == RECIPES_OFF


def test_the_recipe_config_is_the_accelerator_config_with_recipes_on():
    plain = load_config([f"--config_path={REPO / 'cifar10_config.yaml'}"]).to_dict()
    plus = load_config([f"--config_path={REPO / 'cifar10_config_plus.yaml'}"]).to_dict()
    changed = {key for key in plain if plain[key] != plus[key]}
    assert changed == {"epoch_size", "lr_scheduler", "T_max", "warmup_epochs", "use_label_smooth", "auto_augment",
                       "random_erasing", "mixup_alpha", "cutmix_alpha", "ema_decay", "dataset_sink_mode",
                       "eval_interval"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_with_all_keys_and_help(path):
    config = load_config([f"--config_path={path}"])
    assert set(config.to_dict()) == set(SCHEMA)
    with open(path) as handle:
        documents = list(yaml.safe_load_all(handle))
    assert set(documents[0]) == set(SCHEMA)
    assert set(documents[1]) == set(SCHEMA), "every key needs a help string"
    assert all(str(text).strip() for text in documents[1].values())


def test_cpu_and_accelerator_defaults():
    cpu = load_config([f"--config_path={CPU_CONFIG}"])
    ascend = load_config([f"--config_path={REPO / 'cifar10_config.yaml'}"])
    imagenet = load_config([f"--config_path={REPO / 'imagenet_config.yaml'}"])
    assert (cpu.device_target, cpu.amp_level) == ("CPU", "O0")
    assert (ascend.amp_level, imagenet.amp_level) == ("O2", "O2")
    assert cpu.dropout_rate == ascend.dropout_rate == 0.2
    assert cpu.no_decay_bn_bias and imagenet.no_decay_bn_bias
    assert imagenet.lr_epochs == [70, 140, 210, 280] and imagenet.use_label_smooth


def test_overrides_are_typed_from_the_schema():
    config = load_config([f"--config_path={CPU_CONFIG}", "--batch_size=7", "--lr_init", "0.5",
                          "--lr_epochs=30,60,90", "--use_label_smooth=1", "--no_decay_bn_bias=false",
                          "--dataset_name=imagenet", "--eta_min=1e-5"])
    assert config.batch_size == 7 and isinstance(config.batch_size, int)
    assert config.lr_init == 0.5
    assert config.lr_epochs == [30, 60, 90]
    assert config.use_label_smooth is True and config.no_decay_bn_bias is False
    assert config.dataset_name == "imagenet" and config.eta_min == 1e-5


@pytest.mark.parametrize("text, expected", [("True", True), ("true", True), ("1", True),
                                            ("False", False), ("false", False), ("0", False)])
def test_booleans(text, expected):
    assert load_config([f"--config_path={CPU_CONFIG}", f"--enable_modelarts={text}"]).enable_modelarts is expected


@pytest.mark.parametrize("flag, fragments", [
    ("--batch_size=0", ["batch_size=0", "> 0"]),
    ("--batch_size=-3", ["batch_size=-3", "> 0"]),
    ("--batch_size=abc", ["--batch_size='abc'", "integer"]),
    ("--batch_size=2.5", ["--batch_size='2.5'", "integer"]),
    ("--lr_init=0", ["lr_init=0.0", "> 0"]),
    ("--lr_init=fast", ["--lr_init='fast'", "number"]),
    ("--image_height=0", ["image_height=0", "> 0"]),
    ("--image_width=-1", ["image_width=-1", "> 0"]),
    ("--epoch_size=0", ["epoch_size=0", "> 0"]),
    ("--dataset_name=mnist", ["dataset_name=mnist", "cifar10, imagenet"]),
    ("--device_target=TPU", ["device_target=TPU", "Ascend, GPU, CPU"]),
    ("--file_format=PB", ["file_format=PB", "MINDIR, ONNX, AIR"]),
    ("--lr_scheduler=linear", ["lr_scheduler=linear", "step, exponential, cosine_annealing"]),
    ("--amp_level=O4", ["amp_level=O4", "O0, O1, O2, O3"]),
    ("--use_label_smooth=yes", ["use_label_smooth", "True/False"]),
    ("--compiled_max_pool=fast", ["compiled_max_pool", "True/False"]),
    ("--compiled_conv=1x", ["compiled_conv", "True/False"]),
    ("--fold_batchnorm=maybe", ["fold_batchnorm", "True/False"]),
    ("--compiled_optimizer=on", ["compiled_optimizer", "True/False"]),
    ("--lr_epochs=90,60", ["lr_epochs=90,60", "increasing"]),
    ("--lr_epochs=a,b", ["--lr_epochs='a,b'", "list of integers"]),
    ("--dropout_rate=1.0", ["dropout_rate=1.0", "[0, 1)"]),
    ("--num_classes=1", ["num_classes=1", "at least 2"]),
    ("--bach_size=3", ["--bach_size=3", "did you mean batch_size"]),
    ("--lr_init=nan", ["--lr_init='nan'", "number"]),
    ("--auto_augment=rand-m9", ["auto_augment=rand-m9", "randaugment-m<magnitude 0..30>", "trivialaugment"]),
    ("--auto_augment=randaugment-m31", ["auto_augment=randaugment-m31", "0..30"]),
    ("--auto_augment=randaugment-m9-n0", ["auto_augment=randaugment-m9-n0", "-n<ops>"]),
    ("--random_erasing=1.5", ["random_erasing=1.5", "[0, 1]"]),
    ("--mixup_alpha=-0.2", ["mixup_alpha=-0.2", "0 (off) or a value >= 0.4"]),
    ("--mixup_alpha=0.2", ["mixup_alpha=0.2", "MixUpBatch fails"]),
    ("--cutmix_alpha=x", ["--cutmix_alpha='x'", "number"]),
    ("--mixup_switch_prob=2", ["mixup_switch_prob=2.0", "[0, 1]"]),
    ("--ema_decay=1", ["ema_decay=1.0", "[0, 1)"]),
    ("--clip_grad_norm=-1", ["clip_grad_norm=-1.0", ">= 0"]),
    ("--grad_accumulation_steps=0", ["grad_accumulation_steps=0", "> 0"]),
    ("--grad_accumulation_steps=1.5", ["--grad_accumulation_steps='1.5'", "integer"]),
])
def test_bad_values_name_key_value_and_what_is_allowed(flag, fragments):
    with pytest.raises(ConfigError) as caught:
        load_config([f"--config_path={CPU_CONFIG}", flag])
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("flag", ["--ema_decay=0.999", "--clip_grad_norm=5", "--grad_accumulation_steps=2"])
def test_train_step_recipes_need_a_fixed_loss_scale(flag):
    with pytest.raises(ConfigError) as caught:
        load_config([f"--config_path={CPU_CONFIG}", "--is_dynamic_loss_scale=True", flag])
    key = flag[2:].split("=")[0]
    assert f"{key}=" in str(caught.value) and "is_dynamic_loss_scale" in str(caught.value), caught.value


def test_ema_needs_steps_outside_the_dataset_sink():
    with pytest.raises(ConfigError, match=r"^ema_decay=0.99 \(command line\) needs dataset_sink_mode=False"):
        load_config([f"--config_path={CPU_CONFIG}", "--dataset_sink_mode=True", "--ema_decay=0.99"])


@pytest.mark.parametrize("text", ["none", "randaugment-m0", "randaugment-m30-n3", "autoaugment-imagenet",
                                  "autoaugment-cifar10", "trivialaugment"])
def test_every_auto_augment_form_loads(text):
    assert load_config([f"--config_path={CPU_CONFIG}", f"--auto_augment={text}"]).auto_augment == text


def _write(tmp_path, text: str):
    path = tmp_path / "my_config.yaml"
    path.write_text(text)
    return path


def _values(**changes) -> dict:
    with open(CPU_CONFIG) as handle:
        values = next(yaml.safe_load_all(handle))
    values.update(changes)
    return values


def test_yaml_errors(tmp_path):
    cases = [
        (yaml.safe_dump(_values(batch_size="big")), "batch_size='big' in my_config.yaml has the wrong type"),
        (yaml.safe_dump({**_values(), "batch_szie": 3}), "unknown key 'batch_szie' (did you mean batch_size?)"),
        (yaml.safe_dump({k: v for k, v in _values().items() if k != "momentum"}), "missing key 'momentum'"),
        ("batch_size: [1,\n", "config file"),
        (yaml.safe_dump(_values(epoch_size=0)), "epoch_size=0 (my_config.yaml) is invalid"),
    ]
    for text, fragment in cases:
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_config([f"--config_path={path}"])
        assert fragment in str(caught.value)


def test_third_document_narrows_choices(tmp_path):
    path = _write(tmp_path, yaml.safe_dump(_values()) + "---\n{}\n---\ndevice_target: [CPU]\n")
    assert load_config([f"--config_path={path}"]).device_target == "CPU"
    with pytest.raises(ConfigError, match="device_target=GPU .* expected one of: CPU"):
        load_config([f"--config_path={path}", "--device_target=GPU"])


def test_saved_config_loads_back(tmp_path):
    config = load_config([f"--config_path={CPU_CONFIG}", "--batch_size=5", "--lr_epochs=3,4"])
    config.save(tmp_path / "config.yaml")
    again = load_config([f"--config_path={tmp_path / 'config.yaml'}"])
    assert again.to_dict() == config.to_dict()


def test_importing_src_does_not_parse_argv():
    code = ("import src.model_utils.config, src.dataset, src.googlenet, src.trainer, src.lr_scheduler, "
            "src.model_utils.device_adapter; print('imported')")
    result = subprocess.run([sys.executable, "-c", code, "--not_a_key=1", "-x"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("script", ["train.py", "eval.py", "export.py"])
def test_entry_scripts_answer_bad_flags_with_one_line_and_exit_2(script, tmp_path):
    result = run_script(script, f"--config_path={CPU_CONFIG}", "--batch_size=0", cwd=tmp_path, timeout=120)
    assert_user_error(result, 2, "batch_size=0", "> 0")
    result = run_script(script, f"--config_path={CPU_CONFIG}", "--learning_rate=0.1", cwd=tmp_path, timeout=120)
    assert_user_error(result, 2, "unknown option '--learning_rate=0.1'")
    assert list(tmp_path.iterdir()) == []


def test_missing_config_file(tmp_path):
    result = run_script("train.py", f"--config_path={tmp_path}/nope.yaml", cwd=tmp_path, timeout=120)
    assert_user_error(result, 2, "nope.yaml does not exist")


def test_help_lists_every_key(tmp_path):
    result = run_script("train.py", f"--config_path={CPU_CONFIG}", "--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0
    for key in SCHEMA:
        assert f"--{key}" in result.stdout


def test_merged_config_is_printed_compactly(trained_cifar):
    lines = trained_cifar.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config "))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        body.append(line)
    text = " ".join(body)
    assert "batch_size=16" in text and "image_height=32" in text and "device_target=CPU" in text
    assert len(body) <= 16 and all(len(line) <= 112 for line in body)
