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
