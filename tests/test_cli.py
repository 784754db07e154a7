"""The entry point answers bad input with one clear message, not a traceback."""

import subprocess
import sys

import pytest

from autogpt_jax.config import ConfigError, load_config


def _train(capsys, *args) -> tuple[int, str]:
    """The entry point's main() in this process: (exit code, stderr)."""
    from autogpt_jax.train import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_missing_config_file_is_a_clear_error():
    """The real command line, in a process of its own: exit code 2 and one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "autogpt_jax.train", "--config_path", "configs/does_not_exist.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: --config_path configs/does_not_exist.yaml: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_key_suggests_the_closest(capsys):
    code, err = _train(capsys, "--config_path", "configs/pretrain_bert_tiny.yaml", "--pretrain.stesp", "3")
    assert code == 2 and "Traceback" not in err
    assert "unknown config key 'pretrain.stesp' on the command line; did you mean 'pretrain.steps'?" in err


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


def test_task_stages_without_data_say_what_is_missing(tmp_path, capsys):
    code, err = _train(capsys, "--stages", "prompt,adapt", "--model.name_or_path", "splade-tiny", "--output_dir",
                       str(tmp_path))
    assert code == 2 and "no labelled data: set --data.dataset" in err
    assert "Traceback" not in err


def test_mesh_that_does_not_fit_the_devices(tmp_path, capsys):
    import jax

    n = jax.device_count() + 2
    code, err = _train(capsys, "--config_path", "tests/configs/tiny_pretrain.yaml", "--mesh.data", str(n),
                       "--output_dir", str(tmp_path))
    assert code == 2 and f"needs {n} devices, but {jax.device_count()} are available" in err


def test_shipped_configs_parse():
    from pathlib import Path

    for p in sorted(Path("configs").glob("*.yaml")) + sorted(Path("tests/configs").glob("*.yaml")):
        cfg = load_config(["--config_path", str(p)])
        assert cfg.stage_list, p


def test_the_summary_of_a_run_that_only_distilled_prints_the_student(capsys):
    """A run with prompt, finetune and distill but no evaluate has only the student's test figure."""
    from autogpt_jax.report import print_report

    acc = {"mean": 0.58, "std": 0.0, "n": 1}
    print_report({"model": "m", "parameters": 1, "stages": ["prompt", "finetune", "distill"],
                  "devices": {"count": 1, "platform": "cpu", "mesh": {"data": 1}},
                  "summary": {"student_test_accuracy": acc, "student_speedup": {"mean": 2.0, "std": 0.0, "n": 1}},
                  "seeds": [{"seed": 13}], "exported_seed": 13})
    out = capsys.readouterr().out
    assert "distilled student  58.0 ± 0.0" in out
    print_report({"model": "m", "parameters": 1, "stages": ["prompt"], "seeds": [{"seed": 13}],
                  "devices": {"count": 1, "platform": "cpu", "mesh": {"data": 1}}, "summary": {"other": acc}})
    assert "test accuracy" not in capsys.readouterr().out
