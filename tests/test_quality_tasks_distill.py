"""The sample-quality measure (Frechet distance on the shipped digit classifier's features), the image-to-image
tasks derived from the data, the held-out split, and the progressive-distillation target."""
import numpy as np
import pytest
import torch

from genfast.training import quality
from genfast.training.data import bold_ink_on_paper, downsample, edges, holdout_split, load_data


def _random_cov(d, gen):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_matches_the_scipy_sqrtm_formula():
    from scipy import linalg

    gen = torch.Generator().manual_seed(0)
    for d in (1, 5, 17):
        mu1, mu2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
        c1, c2 = _random_cov(d, gen), _random_cov(d, gen)
        root = linalg.sqrtm(c1.numpy() @ c2.numpy()).real
        expect = float(((mu1 - mu2) ** 2).sum()) + np.trace(c1.numpy() + c2.numpy() - 2 * root)
        assert quality.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expect, rel=1e-8, abs=1e-9)
        assert quality.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_stats_are_mean_and_unbiased_covariance():
    f = torch.randn(50, 3, dtype=torch.float64)
    mu, cov = quality.gaussian_stats(f)
    torch.testing.assert_close(mu, f.mean(0))
    torch.testing.assert_close(cov, torch.cov(f.T))
    with pytest.raises(ValueError, match="features"):
        quality.gaussian_stats(torch.zeros(1, 3))


@pytest.fixture(scope="module")
def digits():
    if not quality.CLASSIFIER_PATH.exists():
        pytest.skip("the shipped classifier is not in this checkout")
    return load_data("digits", 16)


def test_shipped_classifier_reads_held_out_digits_and_ranks_real_above_noise(digits):
    _, test = holdout_split(digits)
    real = quality.measure(test.images, test.labels)
    assert real.accuracy >= 0.97 and real.confidence > 0.9
    noise = quality.measure(torch.rand(180, 1, 16, 16))
    blurred = quality.measure(torch.nn.functional.avg_pool2d(test.images, 3, 1, 1))
    assert real.frechet_distance < blurred.frechet_distance < noise.frechet_distance
    with pytest.raises(ValueError, match="classifier reads"):
        quality.measure(torch.rand(4, 3, 16, 16))


def test_holdout_split_is_fixed_disjoint_and_complete(digits):
    train, test = holdout_split(digits)
    again, _ = holdout_split(digits)
    assert len(train.images) + len(test.images) == len(digits.images) and len(test.images) == 180
    assert torch.equal(train.images, again.images) and train.name == "digits[train]"
    flat = {tuple(r.tolist()) for r in digits.images.flatten(1)}
    assert len({tuple(r.tolist()) for r in train.images.flatten(1)} | {tuple(r.tolist()) for r in test.images.flatten(1)}) == len(flat)


def test_derived_tasks():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 4:12, 7:9] = 1.0  # a vertical bar
    e = edges(x)
    assert set(e.unique().tolist()) <= {0.0, 1.0} and e[0, 0, 8, 5:11].tolist() == [0, 1, 1, 1, 1, 0]
    b = bold_ink_on_paper(x)
    assert b[0, 0, 8, 6:10].tolist() == [0, 0, 0, 0] and b[0, 0, 0, 0] == 1.0  # thick dark strokes on white
    d = downsample(x, 4)
    assert d.shape == (1, 1, 4, 4) and d[0, 0, 1, 1] == pytest.approx(0.25) and d.sum() * 16 == x.sum()
    with pytest.raises(ValueError, match="divisible"):
        downsample(torch.zeros(1, 1, 10, 10), 4)


def test_distillation_target_is_the_x0_whose_ddim_step_lands_on_the_teachers_result():
    from genfast.ops import ddim_step
    from genfast.training.distill import ddim_x0_target

    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    x_prev = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    a_t = torch.tensor([2e-9, 0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    a_prev = torch.tensor([0.02, 0.3, 0.6, 0.8, 1.0], dtype=torch.float64)
    x0 = ddim_x0_target(x_t, x_prev, a_t, a_prev)
    # the student's v prediction for that x0 (x0 = sqrt(a) x_t - sqrt(1 - a) v), one DDIM step with it
    v = (a_t.sqrt().view(5, 1, 1, 1) * x_t - x0) / (1 - a_t).sqrt().view(5, 1, 1, 1)
    with torch.no_grad():
        stepped = ddim_step(x_t.float(), v.float(), a_t.float(), a_prev.float(), prediction_type="v_prediction")
    torch.testing.assert_close(stepped.double(), x_prev, rtol=1e-4, atol=1e-4)


def test_compare_times_new_models_and_reports_their_quality(tmp_path, capsys, digits):
    import json

    from genfast.cli import main
    from genfast.training.zoo import embedded_path

    for kind, variant in (("distill", 3), ("pix2pix", None)):
        if not embedded_path(kind, variant).exists():
            pytest.skip(f"the embedded {kind} weights are not in this checkout")
    assert main(["compare", "--train", "progan", "--sample", "distill-3,pix2pix", "--train-batches", "1", "--n", "4",
                 "--quality-n", "40", "--out", str(tmp_path / "c.png"), "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(r["task"], r["model"]): r for r in out["rows"]}
    train = rows[("train epoch", "progan")]
    assert train["batches"] == 1 and train["genfast_s"] > 0 and "frechet_distance" not in train
    student, translation = rows[("sample batch", "distill-3")], rows[("sample batch", "pix2pix")]
    assert student["quality_n"] == 40 and translation["quality_n"] == 180  # every held-out input once
    for r in (student, translation):  # the embedded models draw recognisable digits of the asked-for class
        assert r["accuracy"] > 0.8 and r["confidence"] > 0.8 and r["max_pixel_diff"] < 1e-3
        assert 0 < r["frechet_distance"] < 20 * out["real_digits"]["frechet_distance"]
