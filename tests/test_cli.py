"""The entry point answers bad input with one clear message, not a traceback."""

import subprocess
import sys

import pytest

from autogpt_jax.config import ConfigError, load_config


def _train(*args):
    return subprocess.run([sys.executable, "-m", "autogpt_jax.train", *args], capture_output=True, text=True,
                          timeout=120)


def test_missing_config_file_is_a_clear_error():
    proc = _train("--config_path", "configs/does_not_exist.yaml")
    assert proc.returncode == 2
    assert "error: --config_path configs/does_not_exist.yaml: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_key_suggests_the_closest():
    proc = _train("--config_path", "configs/pretrain_bert_tiny.yaml", "--pretrain.stesp", "3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown config key 'pretrain.stesp' on the command line; did you mean 'pretrain.steps'?" in proc.stderr


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name_or_pth: minilm-l6\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.name_or_pth' in .*bad.yaml; did you mean "
                                          r"'model.name_or_path'"):
        load_config(["--config_path", str(bad)])


def test_invalid_values_and_stages():
    with pytest.raises(ConfigError, match="model.dtype must be one of"):
        load_config(["--model.dtype", "float16"])
    with pytest.raises(ConfigError, match="unknown stage"):
        load_config(["--stages", "pretrain,finetuning"])
    with pytest.raises(ConfigError, match="at most one mesh axis may be -1"):
        load_config(["--mesh.fsdp", "-1"])


def test_task_stages_without_data_say_what_is_missing(tmp_path):
    proc = _train("--stages", "prompt,adapt", "--model.name_or_path", "splade-tiny", "--output_dir", str(tmp_path))
    assert proc.returncode == 2 and "no labelled data: set --data.dataset" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mesh_that_does_not_fit_the_devices():
    proc = _train("--config_path", "tests/configs/tiny_pretrain.yaml", "--mesh.data", "3", "--output_dir", "/tmp/x")
    assert proc.returncode == 2 and "needs 3 devices, but 8 are available" in proc.stderr


def test_shipped_configs_parse():
    from pathlib import Path

    for p in sorted(Path("configs").glob("*.yaml")) + sorted(Path("tests/configs").glob("*.yaml")):
        cfg = load_config(["--config_path", str(p)])
        assert cfg.stage_list, p
