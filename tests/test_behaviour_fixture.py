"""The quick-start detectors train, lose and detect exactly as when tests/fixtures/behaviour_quickstart.json was
written (by ``python tests/fixtures/behaviour.py``, before the package was reorganised).

Floating-point results are bit-reproducible only on the instruction set that produced them: torch picks its
vectorised kernels (AVX2, AVX-512, ...) at run time, and their summation orders differ. So on a CPU whose
``torch.backends.cpu.get_cpu_capability()`` equals the fixture's, the state dict's SHA-256, every loss and every
detection must be identical; on another (CI may run elsewhere) they must agree to a relative 1e-4.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location("behaviour_fixture", FIXTURES / "behaviour.py")
behaviour = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(behaviour)

RTOL = 1e-4


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((FIXTURES / "behaviour_quickstart.json").read_text())


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory) -> dict:
    return behaviour.compute_fingerprint(tmp_path_factory.mktemp("behaviour"))


def same_cpu(recorded: dict) -> bool:
    return recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def assert_close_values(actual, expected, what: str, atol: float = 1e-6) -> None:
    """Nested lists / dicts of numbers agree to RTOL (and a small absolute floor for values near zero)."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), what
        for key in expected:
            assert_close_values(actual[key], expected[key], f"{what}.{key}", atol)
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{what}: {len(actual)} values, fixture {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_close_values(a, e, f"{what}[{index}]", atol)
    else:
        assert math.isclose(actual, expected, rel_tol=RTOL, abs_tol=atol), f"{what}: {actual} vs {expected}"


@pytest.mark.parametrize("name", sorted(behaviour.RUNS))
def test_trained_quickstart_model_unchanged(recorded, recomputed, name):
    expected, actual = recorded["runs"][name], recomputed["runs"][name]
    assert len(actual["losses"]) == recorded["train_iters"]
    if same_cpu(recorded):
        assert actual["state_sha256"] == expected["state_sha256"]
        assert actual["losses"] == expected["losses"]
        assert actual["detections"] == expected["detections"]
        return
    assert sorted(actual["tensor_sums"]) == sorted(expected["tensor_sums"])
    for key, (total, magnitude) in expected["tensor_sums"].items():
        # a sum of many terms of either sign: its error scales with the sum of magnitudes
        assert abs(actual["tensor_sums"][key][0] - total) <= RTOL * magnitude + 1e-6, key
    assert_close_values(actual["losses"], expected["losses"], f"{name}.losses")
    assert_close_values(actual["detections"], expected["detections"], f"{name}.detections", atol=1e-3)


def test_loss_variants_unchanged(recorded, recomputed):
    """Every classification / box loss a config can name gives the recorded losses (two passes: EFL's
    gradient statistics from the first change the second)."""
    assert sorted(recomputed["loss_variants"]) == sorted(recorded["loss_variants"])
    if same_cpu(recorded):
        assert recomputed["loss_variants"] == recorded["loss_variants"]
    else:
        assert_close_values(recomputed["loss_variants"], recorded["loss_variants"], "loss_variants")
    efl = recorded["loss_variants"]["retinanet_efl"]
    assert efl[0]["loss_cls"] != efl[1]["loss_cls"]  # the fixture itself exercises the statistics


def test_fingerprint_detects_a_changed_weight():
    """The SHA-256 covers every byte: one ulp in one weight changes it, while the sums barely move."""
    state = {"a.weight": torch.tensor([1.0, -2.0, 3.0]), "b.bias": torch.zeros(2)}
    sha, sums = behaviour.state_fingerprint(state)
    changed = dict(state, **{"a.weight": torch.tensor([1.0, -2.0, torch.nextafter(torch.tensor(3.0),
                                                                             torch.tensor(4.0)).item()])})
    sha_changed, sums_changed = behaviour.state_fingerprint(changed)
    assert sha != sha_changed
    assert sums["a.weight"] == [2.0, 6.0]
    assert math.isclose(sums_changed["a.weight"][0], 2.0, rel_tol=1e-6)
