"""Class-balanced draws for the denoiser: a record weighs its rarest statement's count^-balance."""
import numpy as np

from models.conditions import CardiacState
from models.training.stages import record_weights


def test_rare_statements_are_drawn_more_often_per_record():
    states = [CardiacState({"NORM": 1.0, "SR": 1.0})] * 9 + [CardiacState({"CLBBB": 1.0, "SR": 1.0})]
    uniform = record_weights(states, 0.0)
    np.testing.assert_allclose(uniform, 0.1)
    p = record_weights(states, 0.5)
    assert abs(p.sum() - 1) < 1e-12
    # NORM on 9 records, CLBBB on 1 (SR on all 10): 9^-0.5 against 1^-0.5
    np.testing.assert_allclose(p[-1] / p[0], 3.0)
    # an uncertain statement (below 0.5) does not count
    q = record_weights(states[:-1] + [CardiacState({"SR": 1.0, "CLBBB": 0.3})], 0.5)
    np.testing.assert_allclose(q[-1] / q[0], 10 ** -0.5 / 9 ** -0.5)  # its rarest: SR, on all 10
