"""The loss helpers of motorec.models.base that replace autograd graphs by hand-written backwards."""
import pytest
import torch

from motorec.models.base import sq_sum


@pytest.mark.parametrize("dim", [None, 1])
@pytest.mark.parametrize("shape", [(37, 5), (0, 3), (1, 1)])
def test_sq_sum_matches_pow_sum_bit_for_bit(dim, shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) * 3).requires_grad_()
    y = x.detach().clone().requires_grad_()
    ours = sq_sum(x, dim)
    ref = y.pow(2).sum() if dim is None else y.pow(2).sum(dim)
    assert torch.equal(ours, ref)
    w = torch.randn(ref.shape, generator=g)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_sq_sum_gradcheck_float64():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sq_sum(t, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: sq_sum(t), (x,))
