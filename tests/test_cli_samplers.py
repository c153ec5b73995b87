"""`genfast sample --sampler euler / euler-a / dpm++2m / dpm++2m-sde` on the embedded DDPM, its bad input, and
the sampler rows `genfast compare` accepts."""
import pytest


from genfast.cli import main


@pytest.mark.parametrize("sampler", ["euler", "dpm++2m-sde"])  # the others: tests/test_samplers_sigma.py
def test_sample_with_each_new_sampler(sampler, tmp_path, capsys):
    out = tmp_path / f"{sampler}.png"
    assert main(["sample", "--sampler", sampler, "--steps", "2", "--n", "2", "--out", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert out.exists() and f"({sampler}, 2 steps)" in line and "backend cpu" in line


def test_new_samplers_give_digits_like_the_ddim_sampler():
    """The embedded DDPM through DPM-Solver++(2M) at 8 steps ends near its DDIM samples (same noise and
    labels): both solve the same probability-flow ODE."""
    from genfast.training.zoo import load_model

    model = load_model("ddpm", None, "cpu")
    a = model.sample(4, seed=3, sampler="ddim", steps=8, guidance_scale=2.0)
    b = model.sample(4, seed=3, sampler="dpm++2m", steps=8, guidance_scale=2.0)
    assert a.shape == b.shape == (4, 1, 16, 16)
    assert (a - b).abs().mean() < 0.1
    assert b.flatten(1).std(0).mean() > 0.05  # the four samples differ


def test_bad_sampler_input_is_one_line(tmp_path, capsys):
    cases = [
        (["sample", "--sampler", "heun", "--out", str(tmp_path / "a.png")], "invalid choice: 'heun'"),
        (["sample", "--sampler", "euler", "--eta", "0.5", "--out", str(tmp_path / "a.png")], "--eta"),
    ]
    for argv, expect in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and expect in err, err
    assert not (tmp_path / "a.png").exists()


def test_compare_knows_the_sampler_rows():
    from genfast.cli.compare import SAMPLE_KINDS, _choices

    for kind in ("euler-10", "euler-a-25", "dpm++2m-10", "dpm++2m-sde-25", "ddim-50"):
        assert kind in SAMPLE_KINDS
    assert _choices("euler-a-10,dpm++2m-25", SAMPLE_KINDS, "--sample") == ["euler-a-10", "dpm++2m-25"]
    with pytest.raises(ValueError, match="--sample"):
        _choices("euler-7", SAMPLE_KINDS, "--sample")

