"""Summed NLL -> NLL per token, perplexity and bits per byte: one function
(:func:`gpt_study.evaluate.heldout.rates`), and training's validation, ``evaluate`` and the server all
report what it says for the same sums, overflow included."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest

from gpt_study.config import TrainConfig
from gpt_study.evaluate.heldout import PPL_CAP_NLL, Sums, rates
from gpt_study.evaluate.report import split_metrics
from gpt_study.serve.views import _summary

validate_module = importlib.import_module("gpt_study.train.validate")  # the package re-exports
# its function under the same name

# (summed NLL in nats, scored targets, bytes of text): ordinary, past float overflow, no bytes
CASES = [(230.0, 100, 400), (1e6, 10, 50), (50.0, 20, 0)]


def test_rates_of_ordinary_sums():
    r = rates(230.0, 100, 400)
    assert r.nll == pytest.approx(2.3)
    assert r.ppl == pytest.approx(math.exp(2.3))
    assert r.bpb == pytest.approx(230.0 / math.log(2) / 400)
    assert rates(50.0, 20, 0).bpb is None


def test_a_huge_nll_gives_the_documented_cap_not_an_overflow():
    r = rates(1e6, 10, 50)
    assert r.nll == 1e5
    assert r.ppl == math.exp(PPL_CAP_NLL) and math.isfinite(r.ppl)
    json.dumps({"ppl": r.ppl}, allow_nan=False)  # strict JSON (the server's) carries it
    assert math.isnan(rates(math.nan, 10, 50).ppl)  # a broken sum stays visibly broken


class _Data:
    """The two things validation reads of a prepared folder."""

    def __init__(self, targets: int, n_bytes: int) -> None:
        self.targets, self.n_bytes = targets, n_bytes

    def tokens(self, split: str) -> np.ndarray:
        return np.zeros(self.targets + 1, dtype=np.uint16)

    def split_meta(self, split: str) -> dict[str, int]:
        return {"bytes": self.n_bytes}


@pytest.mark.parametrize("nll_sum,targets,n_bytes", CASES)
def test_validation_evaluate_and_the_server_agree(monkeypatch, nll_sum, targets, n_bytes):
    expected = rates(nll_sum, targets, n_bytes)
    sums = Sums(targets=targets, nll=nll_sum, nll_known=nll_sum, loss=1.0, weight=1.0)
    monkeypatch.setattr(validate_module, "score_tokens", lambda *a, **k: sums)
    v = validate_module.validate(None, _Data(targets, n_bytes), TrainConfig(eval_iters=0))
    ev = split_metrics(sums.as_dict(), n_bytes)
    served = _summary(nll_sum, targets, n_bytes)
    assert v.nll == ev["nll"] == expected.nll
    assert served["nll"] == pytest.approx(expected.nll, abs=1e-6)  # the server rounds to 6 places
    assert v.ppl == ev["perplexity"] == expected.ppl
    assert served["ppl"] == pytest.approx(expected.ppl, rel=1e-12, abs=1e-6)
    if expected.bpb is None:
        assert v.bpb is None and served["bits_per_byte"] is None
        assert math.isnan(ev["bits_per_byte"])  # evaluate's table shows nan where there is none
    else:
        assert v.bpb == ev["bits_per_byte"] == expected.bpb
        assert served["bits_per_byte"] == pytest.approx(expected.bpb, abs=1e-6)
