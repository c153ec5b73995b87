"""Schedules and timestep spacings against diffusers (the oracle)."""
import numpy as np
import pytest
import torch

from genfast.samplers.schedules import NoiseSchedule, make_betas, make_timesteps

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"])
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("T", [1000, 37])
def test_betas_match_diffusers(beta_schedule, rescale, T):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, beta_start=0.00085,
                                  beta_end=0.012, rescale_betas_zero_snr=rescale)
    betas = make_betas(T, 0.00085, 0.012, beta_schedule, None, rescale)
    assert betas.dtype == torch.float32
    torch.testing.assert_close(betas, ref.betas, rtol=0, atol=0)
    sched = NoiseSchedule(betas)
    torch.testing.assert_close(sched.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)


def test_trained_betas():
    trained = np.linspace(1e-4, 3e-2, 50)
    ref = diffusers.DDIMScheduler(num_train_timesteps=50, trained_betas=trained)
    for given in (trained, trained.tolist(), torch.from_numpy(trained)):
        torch.testing.assert_close(make_betas(50, trained_betas=given), ref.betas, rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained_betas"):
        make_betas(trained_betas=np.zeros((2, 2)))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 4, 7, 50, 333, 1000])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_diffusers(spacing, steps, offset):
    ref = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    if spacing == "leading" and offset and steps == 1000:
        with pytest.raises(ValueError, match="steps_offset"):
            make_timesteps(steps, 1000, spacing, offset)
        return
    ts = make_timesteps(steps, 1000, spacing, offset)
    assert ts.dtype == np.int64
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_timesteps(1001, 1000)
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_timesteps(0, 1000)
    with pytest.raises(ValueError, match="timestep_spacing"):
        make_timesteps(10, 1000, "bogus")
    with pytest.raises(ValueError, match="beta_schedule"):
        make_betas(beta_schedule="bogus")


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_table(set_alpha_to_one):
    ref = diffusers.DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=set_alpha_to_one)
    ref.set_timesteps(9)
    sched = NoiseSchedule.from_config(**ref.config)
    table = sched.table("ddim", 9, "cpu")
    assert table.timesteps_host == ref.timesteps.tolist()
    ratio = 1000 // 9
    for i, t in enumerate(table.timesteps_host):
        prev = t - ratio
        expected_prev = ref.alphas_cumprod[prev] if prev >= 0 else ref.final_alpha_cumprod
        assert table.alpha_prod_t_host[i] == float(ref.alphas_cumprod[t])
        assert table.alpha_prod_t_prev_host[i] == float(expected_prev)
    torch.testing.assert_close(table.alpha_prod_t_prev, torch.tensor(table.alpha_prod_t_prev_host))
    assert sched.table("ddim", 9, "cpu") is table  # built once per (steps, device)


def test_ddpm_table():
    ref = diffusers.DDPMScheduler(steps_offset=1)
    ref.set_timesteps(10)
    sched = NoiseSchedule.from_config(**ref.config)
    table = sched.table("ddpm", 10, "cpu")
    for i, t in enumerate(table.timesteps_host):
        prev = int(ref.previous_timestep(t))
        assert table.alpha_prod_t_prev_host[i] == (float(ref.alphas_cumprod[prev]) if prev >= 0 else 1.0)
        assert table.adds_noise_host[i] == (t > 0)
    assert table.adds_noise_host[-1]  # the last timestep is 1 with steps_offset=1: diffusers adds noise there
