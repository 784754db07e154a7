"""The entry points answer with messages, not tracebacks."""

import subprocess
import sys


def test_train_entry_point_explains_itself():
    proc = subprocess.run([sys.executable, "-m", "autogpt_jax.train", "--config_path", "configs/sentiment_mr.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not built yet" in proc.stderr
    assert "Traceback" not in proc.stderr
