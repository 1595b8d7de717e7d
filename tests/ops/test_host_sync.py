"""``motorec.testing.no_host_sync``: the CPU-side detector of ops that make the host wait for the device."""
import pytest
import torch

import motorec
from motorec.testing import HostSyncError, no_host_sync


@torch.library.custom_op("motorec_test::sync_probe", mutates_args=())
def _sync_probe(x: torch.Tensor, read: bool) -> torch.Tensor:
    if read and x.sum().item() > 0:  # a sync hidden inside a custom op's implementation
        return x * 2
    return x + 1


@_sync_probe.register_fake
def _(x, read):
    return torch.empty_like(x)


_T = torch.randn(20)
_M = _T > 0
CAUGHT = {
    "item": lambda: _T.sum().item(),
    "float": lambda: float(_T.sum()),
    "bool": lambda: bool(_T.sum() > 0),
    "if": lambda: 1 if (_T > 0).any() else 0,
    "mask_index": lambda: _T[_M],
    "mask_assign": lambda: _T.clone().__setitem__(_M, 0.0),
    "unique": lambda: torch.unique(_T),
    "unique_consecutive": lambda: torch.unique_consecutive(_T),
    "nonzero": lambda: _M.nonzero(),
    "where_one_arg": lambda: torch.where(_M),
    "masked_select": lambda: torch.masked_select(_T, _M),
    "bincount": lambda: torch.bincount(_M.long()),
    "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
    "equal": lambda: torch.equal(_T, _T),
    "inside_custom_op": lambda: _sync_probe(_T, True),
}


@pytest.mark.parametrize("name", list(CAUGHT))
def test_catches(name):
    with pytest.raises(HostSyncError), no_host_sync():
        CAUGHT[name]()
    CAUGHT[name]()  # outside the mode it runs


def test_fixed_size_forms_pass():
    idx = torch.randint(0, 5, (20,))
    with no_host_sync():
        torch.where(_M, _T, 0.0)
        torch.zeros(5, dtype=torch.int64).index_add_(0, idx, torch.ones_like(idx))
        torch.zeros(5).scatter_add_(0, idx, _T)
        _T[torch.tensor([1, 2])]
        _T.masked_fill(_M, 0.0)
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]), output_size=3)
        _sync_probe(_T, False)
        torch.randperm(10)


def test_allow_lets_named_ops_through():
    with no_host_sync(allow=("bincount",)):
        torch.bincount(torch.tensor([0, 3]), minlength=4)


def test_sees_backward_and_motorec_ops():
    z = torch.randn(30, 6, requires_grad=True)
    cb = torch.randn(2, 5, 6, requires_grad=True)
    codes = torch.randint(0, 5, (30, 2))
    with no_host_sync():
        rho = motorec.ops.code_usage(z, codes, cb, 1.0, "softmax", backend="torch")
        rho.pow(2).sum().backward()
    with pytest.raises(HostSyncError), no_host_sync():
        y = z.sum(1)
        (y * float(y.max())).sum().backward()
