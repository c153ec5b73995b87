"""The networks of issue 14 one by one: output shapes and ranges, the defining behaviour of each (fade-in,
pixel norm, minibatch stddev, equalized LR, U-Net skips, test-time dropout, cycle pool, sub-pixel
upsampling, the latent scale), and that a few optimizer steps on a fixed batch reduce each one's loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from genfast import models
from genfast.models.progan import minibatch_stddev, pixel_norm


def _fits(loss_fn, params, steps=8, lr=1e-3):
    """Loss before and after `steps` Adam steps on a fixed batch."""
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, float(loss_fn().detach())


# ---- ProGAN -------------------------------------------------------------------------------------------
def test_pixel_norm_gives_unit_mean_square_per_pixel():
    x = torch.randn(3, 5, 4, 7) * 3
    y = pixel_norm(x)
    torch.testing.assert_close(y.square().mean(1), torch.ones(3, 4, 7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y / y.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("batch,group", [(8, 4), (6, 4), (5, 4), (4, 1)])
def test_minibatch_stddev_channel_matches_a_loop(batch, group):
    x = torch.randn(batch, 3, 4, 4, dtype=torch.float64)
    out = minibatch_stddev(x, group)
    assert out.shape == (batch, 4, 4, 4) and torch.equal(out[:, :3], x)
    g = max(d for d in range(1, min(group, batch) + 1) if batch % d == 0)
    m = batch // g
    for b in range(batch):
        members = x[[i for i in range(batch) if i % m == b % m]]
        expect = (members.var(0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(out[b, 3], expect.expand(4, 4))


def test_equalized_layers_scale_weights_by_he_constant_at_every_call():
    conv = models.EqualizedConv2d(6, 4, 3, padding=1)
    x = torch.randn(2, 6, 5, 5)
    expect = F.conv2d(x, conv.weight * math.sqrt(2 / (6 * 9)), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expect)
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.2)  # stored N(0, 1)
    lin = models.EqualizedLinear(10, 3, gain=1.0)
    v = torch.randn(4, 10)
    torch.testing.assert_close(lin(v), v @ (lin.weight / math.sqrt(10)).T + lin.bias)


def test_progan_generator_grows_and_fades_in_through_the_skip_path():
    g = models.ProGANGenerator(nz=8, channels=[16, 8, 8], nc=1, image_size=16)
    z = torch.randn(3, 8)
    for level, size in enumerate((4, 8, 16)):
        g.set_stage(level, 1.0)
        assert g(z).shape == (3, 1, size, size)
    g.set_stage(2, 0.0)
    faded_out = g(z)
    g.set_stage(1, 1.0)
    torch.testing.assert_close(faded_out, F.interpolate(g(z), scale_factor=2, mode="nearest"))
    g.set_stage(2, 0.3)
    mid = g(z)
    g.set_stage(2, 1.0)
    torch.testing.assert_close(mid, torch.lerp(faded_out, g(z), 0.3))
    with pytest.raises(ValueError, match="alpha"):
        g.set_stage(1, 1.5)


def test_progan_critic_follows_the_stage_and_a_few_steps_reduce_its_loss():
    torch.manual_seed(0)
    d = models.ProGANCritic(channels=[16, 8, 8], nc=1, image_size=16)
    real, fake = torch.rand(8, 1, 8, 8) * 2 - 1, torch.rand(8, 1, 8, 8) * 2 - 1
    d.set_stage(1, 0.5)
    assert d(real).shape == (8,)
    with pytest.raises(ValueError, match="8x8"):
        d(torch.zeros(8, 1, 16, 16))

    def loss():
        return d(fake).mean() - d(real).mean() + 1e-3 * d(real).square().mean()

    before, after = _fits(loss, d.parameters())
    assert after < before


def test_progan_snapshots_keep_each_grown_resolution():
    torch.manual_seed(0)
    p = models.ProGAN(nz=8, channels=[16, 8, 8], nc=1, image_size=16)
    p.generator.set_stage(0, 1.0)
    z = torch.randn(2, 8)
    four = p.generator(z)
    p.take_snapshot(0)
    p.generator.set_stage(2, 1.0)
    with torch.no_grad():
        p.generator.input.weight.add_(1.0)  # the generator trains on; the snapshot must not change
    assert p.resolutions() == [4, 16]
    torch.testing.assert_close(p(z, 4), four)
    assert p(z).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="--resolution"):
        p(z, 8)


def test_progan_schedule_and_faded_reals():
    from genfast.training.progan import real_at_stage, stage_at

    assert [stage_at(s, 10, 3) for s in (0, 9, 10, 15, 20, 35, 40, 99)] == \
        [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0), (2, 1.0)]
    x = torch.rand(2, 1, 16, 16)
    assert real_at_stage(x, 0, 1.0, 3).shape == (2, 1, 4, 4)
    eight = F.avg_pool2d(x, 2)
    coarse = F.interpolate(F.avg_pool2d(eight, 2), scale_factor=2, mode="nearest")
    torch.testing.assert_close(real_at_stage(x, 1, 0.25, 3), torch.lerp(coarse, eight, 0.25))


# ---- latent diffusion and the plain autoencoder ------------------------------------------------------
def test_latent_autoencoder_shapes_and_a_few_steps_reduce_its_loss():
    from genfast.losses import vae_loss

    torch.manual_seed(0)
    ae = models.LatentAutoencoder(1, 16, 4, [8, 16])
    x = torch.rand(6, 1, 16, 16)
    recon, mu, logvar, z, kl = ae(x, seed=3)
    assert recon.shape == x.shape and mu.shape == z.shape == (6, 4, 4, 4) and kl.dim() == 0
    before, after = _fits(lambda: vae_loss(ae(x, seed=3)[0], x, ae(x, seed=3)[4], beta=1e-3), ae.parameters(),
                          lr=3e-3)
    assert after < before


def test_latent_diffusion_scale_makes_latents_unit_variance_and_decodes_to_images():
    torch.manual_seed(0)
    ldm = models.LatentDiffusion({"in_channels": 1, "image_size": 16, "latent_channels": 4, "hidden": [8, 16]},
                                 {"in_channels": 4, "base_channels": 8, "channel_mults": [1], "attention_levels": [],
                                  "num_classes": 10})
    x = torch.rand(64, 1, 16, 16)
    with pytest.raises(ValueError, match="latent scale"):
        ldm.decode_latents(torch.zeros(1, 4, 4, 4))
    scale = ldm.measure_latent_scale(x)
    mu, _ = ldm.autoencoder.encode(x)
    assert (mu * scale).std().item() == pytest.approx(1.0, rel=1e-4)
    z = ldm.encode_latents(x[:5], seed=1)
    assert z.shape == (5, 4, 4, 4)
    img = ldm.decode_latents(z)
    assert img.shape == (5, 1, 16, 16) and 0 <= img.min() and img.max() <= 1
    eps = ldm(z, torch.tensor([3, 5, 7, 9, 11]), class_labels=torch.arange(5))
    assert eps.shape == z.shape


def test_plain_autoencoder_fits_a_gaussian_to_its_codes_and_reduces_its_loss():
    from genfast.losses import vae_reconstruction_nll

    torch.manual_seed(0)
    ae = models.ConvAutoencoder(16, 1, 5)
    x = torch.rand(8, 1, 16, 16)
    recon, code = ae(x)
    assert recon.shape == x.shape and code.shape == (8, 5)
    before, after = _fits(lambda: vae_reconstruction_nll(ae(x)[0], x), ae.parameters(), lr=3e-3)
    assert after < before
    codes = torch.randn(4000, 5, dtype=torch.float64) @ torch.tensor([[2.0, 0, 0, 0, 0], [1, 1, 0, 0, 0],
                                                                      [0, 0, 3, 0, 0], [0, 0, 0, .5, 0],
                                                                      [0, 0, 1, 0, 1]], dtype=torch.float64) + 4
    ae.fit_prior(codes)
    draws = ae.codes_from_noise(torch.randn(20000, 5)).double()
    torch.testing.assert_close(draws.mean(0), codes.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), torch.cov(codes.T), atol=0.25, rtol=0.05)


# ---- pix2pix, CycleGAN, SRGAN --------------------------------------------------------------------------
def test_pix2pix_unet_skips_every_level_and_keeps_dropout_at_test_time():
    torch.manual_seed(0)
    g = models.UNetGenerator(1, 1, 16, base=8, max_mult=4, dropout=0.5, dropout_layers=2).eval()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() < 1
    assert not torch.equal(g(x), g(x))  # dropout is the noise, also in eval mode
    # decoder layer j (after the innermost) reads encoder layer n - j through a skip: its input width doubles
    assert [layer[1].in_channels for layer in g.up] == [32, 64, 32, 16]
    gz = models.UNetGenerator(1, 1, 16, base=8, dropout=0.0)
    src, tgt = torch.rand(4, 1, 16, 16) * 2 - 1, torch.rand(4, 1, 16, 16) * 2 - 1
    before, after = _fits(lambda: (gz(src) - tgt).abs().mean(), gz.parameters(), lr=3e-3)
    assert after < before


def test_patch_discriminator_gives_a_logit_per_patch():
    d = models.PatchDiscriminator(in_channels=2, base=8, layers=2)
    assert d(torch.zeros(3, 2, 16, 16)).shape == (3, 1, 4, 4)
    assert models.PatchDiscriminator(1, 8, 2, norm="instance")(torch.zeros(2, 1, 16, 16)).shape == (2, 1, 4, 4)


def test_cyclegan_generators_shapes_range_and_cycle_loss_decreases():
    torch.manual_seed(0)
    c = models.CycleGAN(channels=1, ngf=8, n_blocks=2)
    a = torch.rand(4, 1, 16, 16) * 2 - 1
    assert c(a, "a2b").shape == a.shape and c(a, "b2a").abs().max() < 1
    with pytest.raises(ValueError, match="direction"):
        c(a, "sideways")
    before, after = _fits(lambda: (c(c(a, "a2b"), "b2a") - a).abs().mean(), c.parameters(), lr=3e-3)
    assert after < before


def test_image_pool_fills_then_swaps_half_for_old_fakes():
    pool = models.ImagePool(4, (1, 2, 2))
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    torch.testing.assert_close(pool.query(first), first)  # filling: the new fakes pass through
    assert int(pool.count) == 4
    torch.manual_seed(0)
    new = (100 + torch.arange(64.0)).view(64, 1, 1, 1).expand(64, 1, 2, 2).clone()
    out = pool.query(new)
    swapped = [i for i in range(64) if out[i, 0, 0, 0] != new[i, 0, 0, 0]]
    assert 16 < len(swapped) < 48  # about half come from the history
    for i in swapped:  # an image the pool held: an initial one or an earlier fake of this batch
        assert out[i, 0, 0, 0].item() in {0.0, 1.0, 2.0, 3.0} | {100.0 + k for k in range(i)}


def test_srresnet_upscales_4x_by_sub_pixel_convolution_and_learns():
    torch.manual_seed(0)
    g = models.SRResNet(channels=1, scale=4, ngf=8, n_blocks=2)
    assert sum(isinstance(m, torch.nn.PixelShuffle) for m in g.modules()) == 2
    lo, hi = torch.rand(4, 1, 4, 4) * 2 - 1, torch.rand(4, 1, 16, 16) * 2 - 1
    y = g(lo)
    assert y.shape == (4, 1, 16, 16) and y.abs().max() < 1
    before, after = _fits(lambda: F.mse_loss(g(lo), hi), g.parameters(), lr=3e-3)
    assert after < before
    assert models.SRDiscriminator(1, 16, 8, 16)(hi).shape == (4,)
    with pytest.raises(ValueError, match="scale"):
        models.SRResNet(scale=3)


def test_digit_classifier_shapes_and_training_reduces_its_loss():
    torch.manual_seed(0)
    c = models.DigitClassifier(1, 16, 10, width=8, feature_dim=16)
    x, y = torch.rand(16, 1, 16, 16), torch.randint(0, 10, (16,))
    assert c(x).shape == (16, 10) and c.features(x).shape == (16, 16) and c.feature_maps(x).shape == (16, 16, 4, 4)
    before, after = _fits(lambda: F.cross_entropy(c(x), y), c.parameters(), lr=3e-3)
    assert after < before
