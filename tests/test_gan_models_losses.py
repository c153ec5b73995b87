"""GAN losses, DCGAN / WGAN-GP critic models and the GAN training step (eager path on CPU)."""

import pytest
import torch

import genfast
from genfast import losses
from genfast.models import DCGANDiscriminator, DCGANGenerator, WGANGPCritic
from genfast.training import GANTrainer
from genfast.training import gan as gan_training


def test_gan_losses_match_formulas():
    torch.manual_seed(0)
    r, f = torch.randn(7, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64)
    sr, sf = torch.sigmoid(r), torch.sigmoid(f.squeeze(1))
    fs = f.squeeze(1)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # noqa: E731
    close(losses.minimax_d_loss(r, f), -(torch.log(sr).mean() + torch.log(1 - sf).mean()))
    close(losses.minimax_g_loss(f), torch.log(1 - sf).mean())
    close(losses.nonsaturating_d_loss(r, f), losses.minimax_d_loss(r, f))
    close(losses.nonsaturating_g_loss(f), -torch.log(sf).mean())
    close(losses.lsgan_d_loss(r, f), 0.5 * ((r - 1) ** 2).mean() + 0.5 * (fs**2).mean())
    close(losses.lsgan_g_loss(f), 0.5 * ((fs - 1) ** 2).mean())
    close(losses.wgan_d_loss(r, f), fs.mean() - r.mean())
    close(losses.wgan_g_loss(f), -fs.mean())
    close(losses.hinge_d_loss(r, f), torch.relu(1 - r).mean() + torch.relu(1 + fs).mean())
    close(losses.hinge_g_loss(f), -fs.mean())
    # extreme logits stay finite (softplus form)
    big = torch.tensor([1e4, -1e4])
    assert torch.isfinite(losses.minimax_d_loss(big, -big)) and torch.isfinite(losses.nonsaturating_g_loss(big))
    with pytest.raises(ValueError, match="name"):
        losses.gan_losses("nope")


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("classes", [None, 5])
def test_models_shapes(size, classes):
    g = DCGANGenerator(nz=8, ngf=4, image_size=size, num_classes=classes)
    d = DCGANDiscriminator(ndf=4, image_size=size, num_classes=classes)
    c = WGANGPCritic(ndf=4, image_size=size, num_classes=classes, norm="layer")
    c0 = WGANGPCritic(ndf=4, image_size=size, norm="none")
    y = torch.randint(0, 5, (3,)) if classes else None
    x = g(torch.randn(3, 8), y)
    assert x.shape == (3, 3, size, size) and x.abs().max() <= 1
    assert d(x, y).shape == (3,) and c(x, y).shape == (3,) and c0(x).shape == (3,)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in c.modules())
    with pytest.raises(ValueError, match="norm"):
        WGANGPCritic(norm="batch")
    with pytest.raises(ValueError, match="image_size"):
        DCGANGenerator(image_size=48)
    if classes:
        with pytest.raises(ValueError, match="y"):
            c(x)


def test_critic_samples_independent():
    # No BatchNorm: a sample's score does not depend on the rest of the batch (needed for a per-sample penalty).
    c = WGANGPCritic(ndf=4, image_size=32)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(c(x)[:2], c(x[:2]), rtol=1e-5, atol=1e-6)


def test_penalty_on_wgangp_critic_matches_plain():
    c = WGANGPCritic(ndf=4, image_size=32, num_classes=3)
    real, fake = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    y = torch.tensor([0, 2, 1])
    p = genfast.ops.gradient_penalty(c, real, fake, seed=4, y=y)
    p.backward()
    g1 = [q.grad.clone() if q.grad is not None else torch.zeros_like(q) for q in c.parameters()]
    c.zero_grad(set_to_none=True)
    from genfast.ops.gradient_penalty import reference_gradient_penalty

    p2 = reference_gradient_penalty(c, real, fake, seed=4, y=y)
    p2.backward()
    g2 = [q.grad.clone() if q.grad is not None else torch.zeros_like(q) for q in c.parameters()]
    torch.testing.assert_close(p, p2, rtol=2e-5, atol=2e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("loss,penalty", [("wgan", "two-sided"), ("nonsaturating", "r1"), ("hinge", None)])
def test_trainer_eager_cpu(loss, penalty):
    torch.manual_seed(0)
    g = DCGANGenerator(nz=8, ngf=4, image_size=32, num_classes=3)
    c = WGANGPCritic(ndf=4, image_size=32, num_classes=3)
    t = GANTrainer(g, c, nz=8, n_critic=2, loss=loss, penalty=penalty)
    assert t.opt_d.defaults["betas"] == (0.0, 0.9)
    before_c = [p.detach().clone() for p in c.parameters()]
    before_g = [p.detach().clone() for p in g.parameters()]
    reals = iter([torch.randn(4, 3, 32, 32) for _ in range(4)])
    labels = iter([torch.randint(0, 3, (4,)) for _ in range(4)])
    for _ in range(2):
        out = t.train_step(reals, labels)
        assert all(v is None or torch.isfinite(v) for v in out.values())
    assert t.critic_steps == 4
    assert any(not torch.equal(a, b) for a, b in zip(before_c, c.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, g.parameters()))


def test_lazy_regularization_every_k_scaled(monkeypatch):
    calls = []
    real_fn = gan_training.gradient_penalty

    def spy(*args, **kw):
        calls.append(kw["weight"])
        return real_fn(*args, **kw)

    monkeypatch.setattr(gan_training, "gradient_penalty", spy)
    g = DCGANGenerator(nz=8, ngf=4, image_size=32)
    c = WGANGPCritic(ndf=4, image_size=32)
    t = GANTrainer(g, c, nz=8, n_critic=1, lazy_every=3, penalty_weight=10.0)
    pens = [t.critic_step(torch.randn(2, 3, 32, 32))["penalty"] for _ in range(7)]
    assert [p is not None for p in pens] == [True, False, False, True, False, False, True]
    assert calls == [30.0, 30.0, 30.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trainer_cuda_graph_matches_eager_shapes():
    torch.manual_seed(0)
    g = DCGANGenerator(nz=8, ngf=4, image_size=32).cuda()
    c = WGANGPCritic(ndf=4, image_size=32).cuda()
    t = GANTrainer(g, c, nz=8, n_critic=1, lazy_every=2, cuda_graph=True)
    for _ in range(5):
        out = t.critic_step(torch.randn(4, 3, 32, 32, device="cuda"))
        assert torch.isfinite(out["loss"])
    assert len(t._graphs) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trainer_cuda_graph_trains_as_eager_and_its_outputs_are_not_overwritten():
    """The capture's warm-up steps are undone (same critic weights as eager after the same steps), and a
    step's returned loss is not the graph's static output that the next replay overwrites."""
    def run(cuda_graph):
        torch.manual_seed(0)
        g = DCGANGenerator(nz=8, ngf=4, image_size=32).cuda()
        c = WGANGPCritic(ndf=4, image_size=32).cuda()
        t = GANTrainer(g, c, nz=8, n_critic=1, cuda_graph=cuda_graph)
        gen = torch.Generator(device="cuda").manual_seed(1)
        losses = [t.critic_step(torch.randn(4, 3, 32, 32, device="cuda", generator=gen))["loss"] for _ in range(4)]
        return losses, [p.detach().clone() for p in c.parameters()]

    eager_losses, eager_params = run(False)
    graph_losses, graph_params = run(True)
    for a, b in zip(eager_losses, graph_losses):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert len({float(v) for v in graph_losses}) == len(graph_losses)  # each step kept its own loss
    for a, b in zip(eager_params, graph_params):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps_before", [0, 2])
def test_critic_state_restore_undoes_warmup_steps(steps_before):
    """What the CUDA-graph capture relies on, on the CPU: optimizer steps taken after a snapshot are undone
    in place (weights, BatchNorm buffers, Adam state; a fresh Adam state back to zeros), so the next step
    equals the one an uninterrupted run takes."""
    from genfast.models import DCGANDiscriminator

    def trainer():
        torch.manual_seed(0)
        g = DCGANGenerator(nz=8, ngf=4, image_size=16)
        c = DCGANDiscriminator(ndf=4, image_size=16)
        return GANTrainer(g, c, nz=8, n_critic=1, loss="nonsaturating", penalty=None)

    batches = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    a, b = trainer(), trainer()
    for i, x in enumerate(batches[:steps_before]):  # the same fakes for both: reseed before each step
        torch.manual_seed(10 + i)
        a.critic_step(x)
        torch.manual_seed(10 + i)
        b.critic_step(x)
    saved = b._critic_state()
    addresses = [p.data_ptr() for p in b.critic.parameters()]
    for x in batches[3:6]:  # the "warm-up": steps that must leave no trace
        b.critic_step(x)
    b._restore_critic_state(saved)
    assert addresses == [p.data_ptr() for p in b.critic.parameters()]
    torch.manual_seed(5)
    la = a.critic_step(batches[2])["loss"]
    torch.manual_seed(5)
    lb = b.critic_step(batches[2])["loss"]
    assert torch.equal(la, lb)
    for p, q in zip(a.critic.parameters(), b.critic.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.critic.buffers(), b.critic.buffers()):
        assert torch.equal(p, q)
