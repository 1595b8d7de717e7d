"""Reference attention over sources (``motorec::source_attention``'s ``torch`` backend and its oracle).

For M sources ``h^m`` ([N, d] each) and the parameters ``W`` [d, d], ``b`` [d], ``q`` [d]:
    logit_im = q . tanh(W h_im + b)
    a_im     = softmax_m(logit_im)
    out_i    = sum_m a_im h_im

:func:`source_attention_autograd` is this formula under autograd (the oracle of the tests). The ``torch``
backend (:func:`source_attention_forward`, :func:`source_attention_backward`) computes the same in the sigmoid
form, ``q . tanh(y) = 2 q . sigmoid(2 y) - sum(q)``: the constant is the same for every source, so the softmax
drops it, and ATen's float ``sigmoid`` is about 4x cheaper than its ``tanh`` on CPU. With ``s = sigmoid(2 (W h
+ b))`` and the doubled parameters ``W2 = 2 W``, ``b2 = 2 b``, ``q2 = 2 q``, the gradients are:
    gw_im      = h_im . g_out_i + g_attn_im
    g_logit_im = a_im (gw_im - sum_k a_ik gw_ik)               (softmax backward over m)
    g_y_im     = g_logit_im q2 * s_im * (1 - s_im)             ([d], elementwise)
    d q        = 2 sum_im g_logit_im s_im
    d W        = 2 sum_im g_y_im h_im^T,   d b = 2 sum_im g_y_im
    d h_im     = W2^T g_y_im + a_im g_out_i

Auxiliary output ``aux`` (saved for the backward, not differentiable): here ``s`` of every source, [M, N, d];
the C++ kernel recomputes it and returns an empty tensor.

Shapes:
    hs: M tensors [N, d] (one dtype and device), weight [d, d], bias [d], query [d]
    -> out [N, d], attn [N, M].
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def source_attention_autograd(hs: Sequence[Tensor], weight: Tensor, bias: Tensor, query: Tensor
                              ) -> Tuple[Tensor, Tensor]:
    """The definition, under autograd (tanh form; the tests' oracle, run in float64)."""
    h = torch.stack(list(hs))  # [M, N, d]
    logits = torch.tanh(h @ weight.t() + bias) @ query  # [M, N]
    a = torch.softmax(logits, dim=0)
    return (a.unsqueeze(-1) * h).sum(0), a.t()


def source_attention_forward(hs: Sequence[Tensor], weight: Tensor, bias: Tensor, query: Tensor
                             ) -> Tuple[Tensor, Tensor, Tensor]:
    """``(out [N, d], attn [N, M], aux = s [M, N, d])`` in the sigmoid form."""
    m, (n, d) = len(hs), hs[0].shape
    wt2, b2, q2 = 2.0 * weight.t(), 2.0 * bias, 2.0 * query
    s = hs[0].new_empty((m, n, d))
    for i, h in enumerate(hs):
        torch.addmm(b2, h, wt2, out=s[i])
    s.sigmoid_()
    a = torch.softmax(s.view(m * n, d).mv(q2).view(m, n), dim=0)  # [M, N]
    out = hs[0] * a[0].unsqueeze(1)
    for i in range(1, m):
        out.addcmul_(hs[i], a[i].unsqueeze(1))
    return out, a.t().contiguous(), s


def source_attention_backward(grad_out: Tensor, grad_attn: Optional[Tensor], hs: Sequence[Tensor], weight: Tensor,
                              bias: Tensor, query: Tensor, attn: Tensor, aux: Tensor
                              ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_hs [M, N, d], grad_weight [d, d], grad_bias [d], grad_query [d])``; ``aux`` from the forward."""
    m, (n, d) = len(hs), hs[0].shape
    s, a = aux, attn.t()  # [M, N, d], [M, N]
    gw = torch.stack([torch.linalg.vecdot(h, grad_out) for h in hs])  # [M, N]
    if grad_attn is not None:
        gw = gw + grad_attn.t()
    g_logits = a * (gw - (a * gw).sum(0, keepdim=True))
    q2 = 2.0 * query
    grad_query = 2.0 * torch.einsum("mnd,mn->d", s, g_logits)
    w2 = 2.0 * weight
    grad_hs = grad_out.new_empty((m, n, d))
    g_w2 = weight.new_zeros((d, d))
    g_b2 = bias.new_zeros(d)
    for i, h in enumerate(hs):
        g_y = s[i].neg().add_(1.0).mul_(s[i]).mul_(q2).mul_(g_logits[i].unsqueeze(1))  # [N, d]
        g_w2.addmm_(g_y.t(), h)
        g_b2 += g_y.sum(0)
        torch.mm(g_y, w2, out=grad_hs[i])
        grad_hs[i].addcmul_(a[i].unsqueeze(1), grad_out)
    return grad_hs, 2.0 * g_w2, 2.0 * g_b2, grad_query


def empty_aux(hs: List[Tensor]) -> Tensor:
    """The ``aux`` of a backend that saves nothing (the C++ kernel recomputes ``s``)."""
    return hs[0].new_empty((0,))
