import shutil
from pathlib import Path

import numpy as np
import pytest

from models.data.ludb import LUDB
from models.data.ptbxl import LEADS, PTBXL, DataError


@pytest.fixture(scope="module")
def ptbxl(data_dir):
    return PTBXL(data_dir / "ptbxl-subset", sampling_rate=250)


def test_reads_real_records(ptbxl):
    assert len(ptbxl) == 1625
    rec = ptbxl.record(ptbxl.ecg_ids[0])
    assert rec.signal.shape == (2500, 12) and rec.fs == 250
    assert rec.signal.dtype == np.float32
    # the subset is z-scored per lead: unit variance, zero mean
    assert np.allclose(rec.signal.std(axis=0), 1.0, atol=0.05)
    assert "NORM" in rec.scp_codes
    assert len(LEADS) == 12


def test_labels(ptbxl):
    st = ptbxl.statements
    assert {"AFIB", "SR", "STACH", "SBRAD"} <= set(st.codes("rhythm"))
    assert {"PVC", "LVH"} <= set(st.codes("form")) | set(st.codes("diagnostic"))
    assert st.superclasses({"IMI": 100.0, "SR": 0.0}) == {"MI"}
    n_afib = sum("AFIB" in c for c in ptbxl.df.scp_codes)
    # the CSV's labels agree with the records' own header comments (the data README's
    # summary table says 122; both the CSV and the headers hold 106)
    in_headers = sum("'AFIB'" in ptbxl.path(i).with_suffix(".hea").read_text() for i in ptbxl.ecg_ids)
    assert n_afib == in_headers > 90


def test_patient_wise_split(ptbxl):
    train, held = ptbxl.split()
    assert len(train) + len(held) == len(ptbxl) and held and train
    pt = set(ptbxl.df.loc[train, "patient_id"])
    ph = set(ptbxl.df.loc[held, "patient_id"])
    assert not pt & ph


def test_full_ptbxl_columns_choose_files(data_dir, tmp_path):
    # A full PTB-XL has filename_lr / filename_hr; the reader must pick by rate and not
    # require filename_250.
    import pandas as pd

    df = pd.read_csv(data_dir / "ptbxl-subset" / "ptbxl_database.csv").head(3)
    df.drop(columns=["filename_250"]).to_csv(tmp_path / "ptbxl_database.csv", index=False)
    shutil.copy(data_dir / "ptbxl-subset" / "scp_statements.csv", tmp_path)
    d = PTBXL(tmp_path, sampling_rate=500)
    assert str(d.path(d.ecg_ids[0])).endswith("_hr")
    with pytest.raises(DataError, match="filename_250"):
        PTBXL(tmp_path, sampling_rate=250)
    with pytest.raises(DataError, match="_hr"):
        d.record(d.ecg_ids[0])  # the 500 Hz files are not in the subset


def test_corrupt_record_names_file(data_dir, tmp_path: Path):
    src = data_dir / "ptbxl-subset"
    shutil.copy(src / "ptbxl_database.csv", tmp_path)
    d0 = PTBXL(src)
    rel = Path(d0.df.iloc[0].filename_250)
    (tmp_path / rel.parent).mkdir(parents=True)
    shutil.copy(src / rel.with_suffix(".hea"), tmp_path / rel.with_suffix(".hea"))
    (tmp_path / rel.with_suffix(".dat")).write_bytes(b"\x00\x01")  # truncated
    d = PTBXL(tmp_path)
    with pytest.raises(DataError, match=rel.name):
        d.record(d.ecg_ids[0])


def test_ludb_raw_mv_and_delineation(data_dir):
    ludb = LUDB(data_dir / "ludb")
    assert len(ludb.record_ids) == 150
    sig = ludb.signal(1)
    assert sig.shape == (5000, 12)
    assert 0.2 < np.abs(sig).max() < 10  # millivolts, not z-scores
    waves = ludb.waves(1, "ii")
    kinds = {w.kind for w in waves}
    assert kinds == {"P", "QRS", "T"}
    assert all(w.onset <= w.peak <= w.offset for w in waves)
    qrs = [w for w in waves if w.kind == "QRS"]
    widths_ms = [(w.offset - w.onset) * 2 for w in qrs]
    assert 40 < np.median(widths_ms) < 160
