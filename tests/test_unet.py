"""The small class-conditional U-Net: shapes, conditioning, null class, learned sigma, gradients, errors."""
import pytest
import torch

from genfast.models import UNet
from genfast.models.unet import timestep_embedding


def _unet(**kw):
    torch.manual_seed(0)
    args = dict(in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))
    args.update(kw)
    return UNet(**args).eval()


@pytest.mark.parametrize("mults,blocks,attn", [((1, 2), 1, (1,)), ((1, 2, 2), 2, (0, 2)), ((1,), 1, ())])
def test_shapes(mults, blocks, attn):
    net = _unet(channel_mults=mults, num_res_blocks=blocks, attention_levels=attn)
    x = torch.randn(2, 3, 8, 12)
    assert net(x, torch.tensor([1, 999])).shape == x.shape
    assert net(x, 5).shape == x.shape  # a scalar timestep broadcasts


def test_learn_sigma_doubles_channels():
    net = _unet(learn_sigma=True)
    assert net(torch.randn(1, 3, 8, 8), torch.tensor([3])).shape == (1, 6, 8, 8)


def test_class_conditioning_and_null_class():
    net = _unet(num_classes=10)
    assert net.null_class == 10
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        a = net(x, t, torch.tensor([1, 2]))
        b = net(x, t, torch.tensor([1, 3]))
        null = net(x, t, torch.tensor([10, 10]))
        none = net(x, t)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    torch.testing.assert_close(null, none)  # no labels = the null class


def test_timestep_matters_and_embedding():
    net = _unet()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(net(x, torch.tensor([1])), net(x, torch.tensor([500])))
    emb = timestep_embedding(torch.tensor([0, 7]), 9)
    assert emb.shape == (2, 9)
    torch.testing.assert_close(emb[0, :4], torch.ones(4))  # cos(0)


def test_batch_independence_and_gradients():
    net = _unet(num_classes=3).train()
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    out = net(x, torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]))
    out[0].sum().backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1:].abs().sum() == 0  # GroupNorm: no batch mixing
    assert net.stem.weight.grad.abs().sum() > 0 and net.class_embedding.weight.grad[0].abs().sum() > 0
    assert net.class_embedding.weight.grad[1:].abs().sum() == 0  # only sample 0's class got a gradient


def test_bad_input():
    net = _unet(num_classes=4)
    with pytest.raises(ValueError, match="x"):
        net(torch.randn(1, 2, 8, 8), 1)
    with pytest.raises(ValueError, match="x"):
        net(torch.randn(1, 3, 7, 8), 1)
    with pytest.raises(ValueError, match="t"):
        net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="class_labels"):
        net(torch.randn(2, 3, 8, 8), 1, torch.tensor([1]))
    with pytest.raises(ValueError, match="class_labels"):
        _unet()(torch.randn(1, 3, 8, 8), 1, torch.tensor([0]))
    with pytest.raises(ValueError, match="attention_heads"):
        _unet(attention_heads=3)
