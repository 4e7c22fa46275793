"""The cross-site evaluation reads every CPSC2018 record as the model's input, with the
diagnoses as statements."""
import numpy as np

from models.evaluation.cross_site import SAMPLES, cpsc_records


def test_cpsc2018_records_are_read_whole_with_their_diagnoses(data_dir):
    names, sig, states = cpsc_records(data_dir / "cpsc2018", 250)
    assert len(names) == 120 and sig.shape == (120, SAMPLES, 12)
    assert np.isfinite(sig).all() and abs(float(np.median(sig.std(1))) - 1.0) < 0.3  # z-scored, as PTB-XL
    by = dict(zip(names, states, strict=True))
    assert by["A0001"].statements == {"CRBBB": 1.0, "SR": 1.0}  # '#Dx: RBBB'
    assert by["A0001"].age == 74 and by["A0001"].sex == 0
    af = [s for s in states if "AFIB" in s.statements]
    assert af and all("SR" not in s.statements for s in af)  # AF is not sinus rhythm
    assert all(30 <= s.heart_rate <= 220 for s in states)


def test_a_cpsc2018_header_gives_its_diagnoses_age_and_sex():
    from models.data.cpsc2018 import read_header

    h = read_header(["Age: 74", "Sex: Female", "Dx: AF, PVC", "Rx: Unknown"])
    assert h.dx == ("AF", "PVC") and h.age == 74.0 and h.sex == 1
    h = read_header(["Age: NaN", "Sex: Unknown", "Dx: "])
    assert h.dx == () and np.isnan(h.age) and h.sex == -1
