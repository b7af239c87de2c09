"""The prepared GPU check runs its GPU code paths on the CPU and writes its one results file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_gpu_check_runs_on_the_cpu_and_records_every_measurement(tmp_path):
    # As on a GPU machine that has torch and torchvision only: the other packages cannot be
    # imported (a module set to None in sys.modules raises ImportError).
    absent = ("ray", "mlflow", "webdataset", "boto3")
    script = (f"import runpy, sys; sys.modules.update(dict.fromkeys({absent!r})); "
              f"sys.argv = ['gpu_check.py', '--device', 'cpu', '--quick', '--out', {str(tmp_path)!r}]; "
              f"runpy.run_path({str(REPO / 'bench' / 'gpu_check.py')!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=540)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check-cpu-quick.json").read_text())
    for key in ("synthetic_eager_images_per_s", "synthetic_compiled_images_per_s",
                "loader_images_per_s_per_process", "end_to_end_images_per_s",
                "bf16_matmul_tflops"):
        assert result[key] > 0, key
    assert 0 <= result["end_to_end_data_wait_fraction"] <= 1
    assert result["loader_processes_per_gpu"] >= 1
    table = (tmp_path / "gpu_check-cpu-quick.md").read_text()
    assert "| (c) end to end / synthetic eager |" in table and table in out.stdout + "\n"


def test_the_gpu_check_says_how_to_run_without_a_gpu():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    assert out.returncode == 2 and "--device cpu --quick" in out.stderr
