import subprocess
import sys


def test_doctor_tells_the_truth_on_cpu():
    import torch

    out = subprocess.run([sys.executable, "-m", "twin_engine.ops.cli", "doctor"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "python" in text and torch.__version__ in text
    if not torch.cuda.is_available():
        assert "cuda" in text and "no" in text.split("cuda", 1)[1].splitlines()[0]
        assert "generation backend  onnxruntime (cpu)" in text
    assert "tansu" in text  # broker binary found
    assert "ptbxl-subset" in text


def test_doctor_names_the_databases_a_data_dir_lacks(tmp_path, data_dir):
    """A data dir with only PTB-XL: the doctor names each missing database and what needs it."""
    import os

    (tmp_path / "ptbxl-subset").symlink_to(data_dir / "ptbxl-subset")
    out = subprocess.run([sys.executable, "-m", "twin_engine.ops.cli", "doctor"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "TWIN_ENGINE_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    missing = next(line for line in out.stdout.splitlines() if line.startswith("data missing"))
    for name in ("ludb", "mitdb", "nstdb", "cpsc2018", "cpsc2021"):
        assert name in missing, missing
    assert "ptbxl-subset" not in missing and "noise artifacts" in missing
