import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from biomed.errors import ConfigError
from biomed.imaging.core.balance import repeat_factors, repeat_indices, repeat_summary

NAN = float("nan")


def test_repeat_factors_follow_the_lvis_rule():
    # label 0 in 1 of 10 rows (f 0.1), label 1 in 5 of 10 (f 0.5), label 2 never
    labels = np.zeros((10, 3))
    labels[0, 0] = 1
    labels[:5, 1] = 1
    labels[5, 1] = NAN  # unknown counts as absent
    r = repeat_factors(labels, threshold=0.4)
    assert r[0] == pytest.approx(2.0)  # max(sqrt(0.4 / 0.1), sqrt(0.4 / 0.5) -> 1)
    assert np.allclose(r[1:], 1.0)  # label 1 is above the threshold; rows 5-9 have no label


def test_repeat_indices_keep_every_row_and_add_the_expected_extra_copies():
    r = np.array([1.0, 2.0, 3.5] + [1.25] * 4000)
    idx = repeat_indices(r, seed=0)
    counts = np.bincount(idx, minlength=len(r))
    assert counts[0] == 1 and counts[1] == 2 and counts[2] in (3, 4)
    assert set(np.unique(counts[3:])) <= {1, 2}
    assert abs(counts[3:].mean() - 1.25) < 0.03  # the fraction is kept on average
    assert np.array_equal(idx, repeat_indices(r, seed=0))  # fixed by the seed
    assert not np.array_equal(idx, repeat_indices(r, seed=1))


def test_repeat_summary_reports_the_rare_share_before_and_after():
    labels = np.zeros((10, 2))
    labels[0, 0] = 1
    labels[:, 1] = 1
    idx = repeat_indices(repeat_factors(labels, 0.4), seed=0)
    line = repeat_summary(labels, ["effusion_left", "normal"], idx)
    assert line.startswith("10 -> 11 rows per epoch")
    assert "effusion_left 10.0% -> 18.2%" in line


@pytest.mark.parametrize("threshold", [0, -0.1, 1.5])
def test_repeat_factors_reject_a_threshold_outside_0_1(threshold):
    with pytest.raises(ConfigError, match="repeat_factor_threshold"):
        repeat_factors(np.zeros((3, 2)), threshold)


def test_diffusion_training_set_is_expanded_only_when_asked():
    from biomed.imaging.diffusion.train import balanced

    data = torch.utils.data.TensorDataset(torch.arange(10))
    labels = np.zeros((10, 1))
    labels[3] = 1
    lines = []
    cfg = OmegaConf.create({"seed": 0, "data": {"name": "toy"},
                            "diffusion": {"training": {"repeat_factor_threshold": None}}})
    assert balanced(data, cfg, (labels, ["mass"]), lines.append) is data
    cfg.diffusion.training.repeat_factor_threshold = 0.9
    out = balanced(data, cfg, (labels, ["mass"]), lines.append)
    rows = [int(out[i][0]) for i in range(len(out))]
    assert rows.count(3) == 3 and len(rows) == 12  # sqrt(0.9 / 0.1) = 3 copies of the rare row
    assert "mass 10.0% -> 25.0%" in lines[-1]
    with pytest.raises(ConfigError, match="data=toy has no labels"):
        balanced(data, cfg, None, lines.append)
