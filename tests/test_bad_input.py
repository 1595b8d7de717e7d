"""Bad input at every boundary: each case asserts the error type AND a message naming what is wrong.

Layers covered: the public ops (``motorec.ops``), the raw compiled ops (``torch.ops.motorec_C.*``, when
built), the :class:`motorec.Graph` constructors, the data loaders, checkpoints and the CLI (exit code 2, one
line on stderr, no traceback). Non-contiguous inputs must give the same result as contiguous ones.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from motorec import BackendUnavailable, Graph, ops
from motorec.graph import _check_nnz
from motorec.reference import propagate as ref_propagate
from motorec.reference import residual_quantize as ref_rq
from motorec.reference import spmm as ref_spmm
from motorec.testing import backends_here, power_law_graph

ROOT = Path(__file__).resolve().parents[1]


def _has_c(op: str) -> bool:
    try:
        from motorec import _ext
    except ImportError:
        return False
    return _ext.c_has_op(op)


needs_c_spmm = pytest.mark.skipif(not _has_c("spmm"), reason="motorec._C (spmm) is not built")
needs_c_propagate = pytest.mark.skipif(not _has_c("propagate"), reason="motorec._C (propagate) is not built")
needs_c_rq = pytest.mark.skipif(not _has_c("residual_quantize_fwd"), reason="motorec._C (residual_quantize) is not built")


@pytest.fixture
def graph():
    return power_law_graph(13, 8, 60, seed=5)  # 21 nodes, symmetric, a few isolated


@pytest.fixture
def x(graph):
    return torch.randn(graph.num_cols, 7)


# ---------------------------------------------------------------------------------------------- public ops
@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda x: x.int(), TypeError, r"x must be float16, bfloat16, float32 or float64, got torch.int32"),
        (lambda x: x.to("meta"), ValueError, r"x is on meta but graph is on cpu"),
        (lambda x: x[:-1], ValueError, r"x must have graph.num_cols=21 rows, got x of shape \(20, 7\)"),
        (lambda x: x[:, 0], ValueError, r"x must be 2-D, got shape \(21,\)"),
        (lambda x: x.to_sparse(), TypeError, r"x must be a dense \(strided\) tensor"),
        (lambda x: x.tolist(), TypeError, r"x must be a torch.Tensor, got list"),
    ],
    ids=["int-dtype", "wrong-device", "wrong-rows", "1-D", "sparse-layout", "not-a-tensor"],
)
@pytest.mark.parametrize("op", ["spmm", "propagate"])
def test_graph_ops_refuse_bad_x(graph, x, op, make, exc, match):
    with pytest.raises(exc, match=match):
        if op == "spmm":
            ops.spmm(graph, make(x))
        else:
            ops.propagate(graph, make(x), 2)


@pytest.mark.parametrize("op", ["spmm", "propagate"])
def test_graph_ops_refuse_non_graph(graph, x, op):
    a = graph.to_torch_sparse()
    with pytest.raises(TypeError, match=r"graph must be a motorec.Graph, got Tensor"):
        ops.spmm(a, x) if op == "spmm" else ops.propagate(a, x, 1)


@pytest.mark.parametrize("num_layers", [-1, 1.5, True, "2"])
def test_propagate_refuses_bad_num_layers(graph, x, num_layers):
    with pytest.raises(ValueError, match=r"num_layers must be an int >= 0, got"):
        ops.propagate(graph, x, num_layers)


def test_propagate_refuses_non_square_graph():
    g = Graph.from_csr(torch.tensor([0, 2, 3]), torch.tensor([0, 4, 1]), num_cols=5)
    with pytest.raises(ValueError, match=r"graph must be square for propagation, got 2 x 5"):
        ops.propagate(g, torch.randn(5, 3), 1)


def test_backend_names_are_checked(graph, x, monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'gpu'"):
        ops.spmm(graph, x, backend="gpu")
    monkeypatch.setenv("MOTOREC_BACKEND", "spmm=fastest")
    with pytest.raises(ValueError, match=r"MOTOREC_BACKEND must name one of .*got 'fastest'"):
        ops.spmm(graph, x)


def test_explicit_backend_that_cannot_serve_says_why(graph, x):
    # float16 on CPU: neither the C++ CPU kernel nor CUDA serves it, whatever is built here.
    with pytest.raises(BackendUnavailable, match=r"backend='cpu' cannot run spmm: .*(float16|not built|disabled)"):
        ops.spmm(graph, x.half(), backend="cpu")
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' cannot run propagate"):
        ops.propagate(graph, x, 1, backend="cuda")


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values as ``t``, but a strided view (column-major with a gap)."""
    wide = torch.empty(t.shape[1], t.shape[0] * 2, dtype=t.dtype).t()[::2]
    wide.copy_(t)
    assert not wide.is_contiguous() and torch.equal(wide, t)
    return wide


@pytest.mark.parametrize("op", ["spmm", "propagate"])
def test_graph_ops_non_contiguous_x_is_correct(graph, x, op):
    xs = _non_contiguous(x)
    for backend in backends_here(op, "cpu", x.dtype):
        if op == "spmm":
            out = ops.spmm(graph, xs, backend=backend)
            ref = ref_spmm.spmm(graph.rowptr, graph.col, graph.val, x.contiguous())
        else:
            out = ops.propagate(graph, xs, 2, backend=backend)
            ref = ref_propagate.propagate(graph.rowptr, graph.col, graph.val, x.contiguous(), 2)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6, msg=f"{op} backend={backend}")


def test_residual_quantize_non_contiguous_is_correct():
    xs = _non_contiguous(torch.randn(37, 9))
    cb = torch.randn(3, 9, 11).transpose(1, 2)  # [3, 11, 9] non-contiguous codebooks
    assert not cb.is_contiguous()
    ref = ref_rq.residual_quantize_forward(xs.contiguous(), cb.contiguous())
    for backend in backends_here("residual_quantize", "cpu", torch.float32):
        out = ops.residual_quantize(xs, cb, backend=backend)
        torch.testing.assert_close(out.codes, ref[0], msg=f"codes backend={backend}")
        torch.testing.assert_close(out.quantized, ref[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x_shape,cb_shape,kw,exc,match",
    [
        ((5, 4), (0, 3, 4), {}, ValueError, r"codebooks must have at least one level \(L >= 1\), got shape \(0, 3, 4\)"),
        ((5, 4), (2, 0, 4), {}, ValueError, r"at least one codeword per level \(K >= 1\), got shape \(2, 0, 4\)"),
        ((5, 4), (2, 3, 5), {}, ValueError, r"x has D=4 but codebooks have D=5"),
        ((5, 4), (2, 3, 4), {"cb_dtype": torch.float64}, TypeError, r"x \(torch.float32\) and codebooks \(torch.float64\) must have the same dtype"),
        ((5, 4), (2, 3, 4), {"cb_device": "meta"}, ValueError, r"x is on cpu but codebooks are on meta"),
        ((5, 4), (2, 3, 4), {"x_dtype": torch.int64, "cb_dtype": torch.int64}, TypeError, r"x must be float16, bfloat16, float32 or float64, got torch.int64"),
        ((5,), (2, 3, 4), {}, ValueError, r"x must be 2-D, got shape \(5,\)"),
        ((5, 4), (3, 4), {}, ValueError, r"codebooks must be 3-D, got shape \(3, 4\)"),
    ],
    ids=["L=0", "K=0", "D-mismatch", "dtype-mismatch", "device-mismatch", "int-dtype", "x-1-D", "codebooks-2-D"],
)
def test_residual_quantize_refuses(x_shape, cb_shape, kw, exc, match):
    x = torch.randn(x_shape).to(kw.get("x_dtype", torch.float32))
    cb = torch.randn(cb_shape).to(kw.get("cb_dtype", torch.float32)).to(kw.get("cb_device", "cpu"))
    with pytest.raises(exc, match=match):
        ops.residual_quantize(x, cb)


# ---------------------------------------------------------------------------------------------- Graph
@pytest.mark.parametrize(
    "rowptr,col,val,num_cols,exc,match",
    [
        ([0, 1, 3], [0, 5, 1], None, 2, ValueError, r"col contains id 5, out of range for num_cols=2"),
        ([0, 1, 3], [0, -1, 1], None, 2, ValueError, r"col contains a negative id \(-1\)"),
        ([0, 1, 2], [0, 1, 1], None, 3, ValueError, r"rowptr must start at 0 and end at nnz=3, got 0..2"),
        ([1, 2, 3], [0, 1, 1], None, 3, ValueError, r"rowptr must start at 0"),
        ([0, 2, 1, 3], [0, 1, 1], None, 3, ValueError, r"rowptr must be non-decreasing"),
        ([], [], None, 0, ValueError, r"rowptr must have at least one entry"),
        ([0, 1, 2], [0, 1], [1.0, 2.0, 3.0], 2, ValueError, r"val must have the shape of col \(2,\), got \(3,\)"),
        ([0, 1, 2], [0, 1], [1, 2], 2, TypeError, r"val must be floating point, got torch.int64"),
        ([0.0, 1.0, 2.0], [0, 1], None, 2, TypeError, r"rowptr must have an integer dtype"),
        ([0, 1, 2], [0.0, 1.0], None, 2, TypeError, r"col must have an integer dtype"),
    ],
    ids=["col-out-of-range", "col-negative", "rowptr-wrong-length", "rowptr-not-zero", "rowptr-decreasing",
         "rowptr-empty", "val-shape", "val-int", "rowptr-float", "col-float"],
)
@pytest.mark.parametrize("ctor", ["from_csr", "init"])
def test_hand_made_csr_is_refused(ctor, rowptr, col, val, num_cols, exc, match):
    rp, c = torch.tensor(rowptr), torch.tensor(col)
    if rp.dtype == torch.float32 and not rowptr:
        rp = rp.long()
    if c.dtype == torch.float32 and not col:
        c = c.long()
    v = torch.tensor(val) if val is not None else torch.ones(c.numel())
    with pytest.raises(exc, match=match):
        if ctor == "from_csr":
            Graph.from_csr(rp, c, v, num_cols)
        else:  # the plain constructor must not let a bad CSR through to the kernels either
            Graph(rp, c, v, num_cols)


def test_int32_nnz_overflow_is_arithmetic():
    _check_nnz(2**31 - 1, torch.int32)
    with pytest.raises(ValueError, match=r"nnz=2147483648 overflows int32 column indices; use index_dtype=torch.int64"):
        _check_nnz(2**31, torch.int32)
    with pytest.raises(TypeError, match=r"index_dtype must be torch.int32 or torch.int64, got torch.int16"):
        _check_nnz(10, torch.int16)


def test_int32_node_overflow_refused_before_allocating():
    # 2^32 nodes: the rowptr alone would be 32 GiB; the check must fire before anything is allocated.
    one = torch.tensor([0])
    with pytest.raises(ValueError, match=r"num_users \+ num_items = 4294967296 overflows int32 column indices"):
        Graph.from_interactions(one, one, 2**31, 2**31, index_dtype=torch.int32)
    g = Graph.from_csr(torch.tensor([0, 1]), torch.tensor([2**33]), num_cols=2**34)
    with pytest.raises(ValueError, match=r"num_cols=17179869184 overflows int32 column indices"):
        g.to(index_dtype=torch.int32)


@pytest.mark.parametrize(
    "users,items,nu,ni,exc,match",
    [
        ([0, 1], [0, 9], 3, 9, ValueError, r"items contains id 9, out of range for num_items=9"),
        ([0, -2], [0, 1], 3, 9, ValueError, r"users contains a negative id \(-2\)"),
        ([0, 1], [0, 1, 2], 3, 9, ValueError, r"users and items must have the same length, got 2 and 3"),
        ([0, 1], [0, 1], 3, 2.5, ValueError, r"num_items must be a non-negative int, got 2.5"),
    ],
    ids=["item-out-of-range", "negative-user", "length-mismatch", "float-count"],
)
def test_from_interactions_refuses(users, items, nu, ni, exc, match):
    with pytest.raises(exc, match=match):
        Graph.from_interactions(torch.tensor(users), torch.tensor(items), nu, ni)


def test_from_edge_index_refuses():
    with pytest.raises(ValueError, match=r"edge_index must be a \[2, E\] integer tensor, got \(3, 2\)"):
        Graph.from_edge_index(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"edge_index contains id 4, out of range for num_nodes=4"):
        Graph.from_edge_index(torch.tensor([[0, 1], [2, 4]]), 4)
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[2\], got \(3,\)"):
        Graph.from_edge_index(torch.tensor([[0, 1], [2, 3]]), 4, edge_weight=torch.ones(3))


# ---------------------------------------------------------------------------------------------- raw C++ ops
def _csr():
    return torch.tensor([0, 2, 2, 4]), torch.tensor([0, 2, 1, 2]), torch.randn(4)


@needs_c_spmm
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_c_spmm_refuses_out_of_range_col(index_dtype):
    rowptr, col, val = _csr()
    x = torch.randn(3, 5)
    bad = col.clone()
    bad[1] = 3  # one past the last row of x: a kernel without the check reads out of bounds
    with pytest.raises(RuntimeError, match=r"col contains index 3, out of range for x with 3 rows"):
        torch.ops.motorec_C.spmm(rowptr, bad.to(index_dtype), val, x)
    bad[1] = -4
    with pytest.raises(RuntimeError, match=r"col contains a negative index \(-4\)"):
        torch.ops.motorec_C.spmm(rowptr, bad.to(index_dtype), val, x)


@needs_c_spmm
@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda rp, c, v, x: (rp[:-1], c, v, x), r"rowptr\[-1\] must equal nnz = 4, got 2"),
        (lambda rp, c, v, x: (torch.tensor([0, 3, 2, 4]), c, v, x), r"rowptr must be non-decreasing"),
        (lambda rp, c, v, x: (rp, c, v[:3], x), r"val and col must have the same length"),
        (lambda rp, c, v, x: (rp, c, v.double(), x), r"val must have the dtype of x"),
        (lambda rp, c, v, x: (rp, c.float(), v, x), r"col must be int64 or int32"),
        (lambda rp, c, v, x: (rp, c, v, x[:, 0]), r"x must be 2-D"),
        (lambda rp, c, v, x: (rp, c, v.half(), x.half()), r"x must be float32 or float64"),
    ],
    ids=["rowptr-short", "rowptr-decreasing", "val-length", "val-dtype", "col-float", "x-1-D", "x-half"],
)
def test_c_spmm_refuses_bad_args(mutate, match):
    rowptr, col, val = _csr()
    with pytest.raises(RuntimeError, match=match):
        torch.ops.motorec_C.spmm(*mutate(rowptr, col, val, torch.randn(3, 5)))


@needs_c_spmm
def test_c_spmm_non_contiguous_is_correct():
    rowptr, col, val = _csr()
    x = torch.randn(5, 3).t()  # [3, 5], non-contiguous
    out = torch.ops.motorec_C.spmm(rowptr, col[::1], val, x)
    torch.testing.assert_close(out, ref_spmm.spmm(rowptr, col, val, x.contiguous()), rtol=1e-5, atol=1e-6)


@needs_c_propagate
def test_c_propagate_refuses():
    rowptr, col, val = _csr()
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match=r"num_layers must be >= 0, got -1"):
        torch.ops.motorec_C.propagate(rowptr, col, val, x, -1)
    with pytest.raises(RuntimeError, match=r"graph must be square .*rowptr has 3 rows but x has 4"):
        torch.ops.motorec_C.propagate(rowptr, col, val, torch.randn(4, 5), 1)
    bad = col.clone()
    bad[0] = 7
    with pytest.raises(RuntimeError, match=r"col contains index 7, out of range"):
        torch.ops.motorec_C.propagate(rowptr, bad, val, x, 2)


@needs_c_rq
@pytest.mark.parametrize(
    "x_shape,cb_shape,match",
    [
        ((5, 4), (0, 3, 4), r"(?i)codebooks"),
        ((5, 4), (2, 0, 4), r"(?i)codebooks|K"),
        ((5, 4), (2, 3, 6), r"(?i)D|dim"),
        ((5,), (2, 3, 4), r"(?i)x"),
    ],
    ids=["L=0", "K=0", "D-mismatch", "x-1-D"],
)
def test_c_residual_quantize_refuses(x_shape, cb_shape, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.motorec_C.residual_quantize_fwd(torch.randn(x_shape), torch.randn(cb_shape))


@needs_c_rq
def test_c_residual_quantize_backward_refuses_out_of_range_codes():
    x, cb = torch.randn(6, 4), torch.randn(2, 3, 4)
    codes = torch.zeros(6, 2, dtype=torch.long)
    codes[2, 1] = 3  # K = 3: an unchecked scatter into grad_codebooks would write out of bounds
    with pytest.raises(RuntimeError, match=r"(?i)codes"):
        torch.ops.motorec_C.residual_quantize_bwd(torch.randn(6, 4), torch.randn(6, 2), x, cb, codes)


@needs_c_rq
def test_c_residual_quantize_refuses_dtype_mismatch():
    with pytest.raises(RuntimeError, match=r"(?i)dtype|float"):
        torch.ops.motorec_C.residual_quantize_fwd(torch.randn(5, 4), torch.randn(2, 3, 4, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- loaders
_GOOD_INTER = "userID\titemID\tx_label\n" + "".join(
    f"{u}\t{i}\t{0 if (u + i) % 3 else 1 + (u % 2)}\n" for u in range(6) for i in range(8))


def _mmrec_folder(root: Path, name: str, inter, feats=None) -> Path:
    d = root / name
    d.mkdir()
    if inter is not None:
        (d / f"{name}.inter").write_text(inter)
    g = torch.Generator().manual_seed(7)
    if feats is None:
        feats = {"image": torch.rand(8, 5, generator=g).numpy(), "text": torch.rand(8, 3, generator=g).numpy()}
    import numpy as np

    for m, a in feats.items():
        np.save(d / f"{m}_feat.npy", a)
    return d


def _feat(rows: int = 8, cols: int = 5, *, bad=None):
    a = torch.rand(rows, cols).numpy()
    if bad is not None:
        a[rows // 2, 1] = bad
    return a


@pytest.mark.parametrize(
    "inter,feats,split,match",
    [
        ("", None, "cold", r"shop\.inter: empty file \(expected a tab-separated header"),
        ("userID\titemID\tx_label\n", None, "cold", r"no interactions after the header"),
        ("userID\titem\tx_label\n0\t1\t0\n", None, "cold", r"missing column\(s\) 'itemID' in header"),
        ("userID itemID x_label\n0 1 0\n", None, "cold", r"missing column\(s\) 'userID', 'itemID'.*tab-separated"),
        ("userID\titemID\tx_label\n0\t1\t0\n1\n", None, "cold", r"line 3 has 1 tab-separated field\(s\), expected 3"),
        ("userID\titemID\tx_label\n0\tab\t0\n", None, "cold", r"column 'itemID' has a non-integer value 'ab'"),
        ("userID\titemID\tx_label\n0\t1\t0\n-3\t2\t0\n", None, "cold", r"column 'userID' has a negative id -3 \(line 3\)"),
        (_GOOD_INTER + "2\t8\t0\n", None, "cold", r"column 'itemID' has id 8 .*only 8 rows"),
        (_GOOD_INTER, {"image": _feat(6)}, "cold", r"column 'itemID' has id [67] .*feature files have only 6 rows"),
        (_GOOD_INTER, {"image": _feat(bad=float("nan"))}, "cold", r"image_feat\.npy: non-finite value nan at row 4"),
        (_GOOD_INTER, {"image": _feat(bad=float("inf"))}, "cold", r"image_feat\.npy: non-finite value inf at row 4"),
        (_GOOD_INTER, {"image": _feat(8), "text": _feat(7)}, "cold", r"feature files have different row counts"),
        (_GOOD_INTER, {}, "cold", r"no feature files"),
        ("userID\titemID\tx_label\n0\t1\t7\n", None, "warm", r"column 'x_label' has value 7"),
        ("userID\titemID\n0\t1\n", None, "warm", r"missing column\(s\) 'x_label'"),
        ("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t1\n" for u in range(4) for i in range(8)), None, "warm",
         r"the training split is empty"),
        (None, None, "cold", r"no \.inter file"),
    ],
    ids=["empty-file", "header-only", "missing-column", "space-separated", "short-row", "non-integer-id",
         "negative-user", "item-out-of-range", "fewer-feature-rows", "nan-feature", "inf-feature",
         "feature-row-mismatch", "no-features", "bad-label", "warm-without-label", "empty-train-split",
         "no-inter-file"],
)
def test_load_mmrec_refuses(tmp_path, inter, feats, split, match):
    from motorec.data import DataError, load_mmrec

    folder = _mmrec_folder(tmp_path, "shop", inter, feats)
    with pytest.raises(DataError, match=match):
        load_mmrec(folder, split=split)


def test_load_mmrec_refuses_missing_folder(tmp_path):
    from motorec.data import DataError, load_mmrec

    with pytest.raises(DataError, match=r"data folder not found: .*nowhere"):
        load_mmrec(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"data path is not a folder"):
        load_mmrec(tmp_path / "file.txt")


def test_dataset_refuses_bad_tensors():
    from motorec.data import DataError, Dataset

    feats = {"image": torch.rand(5, 3)}
    pairs = torch.tensor([[0, 1], [1, 2]])
    empty = torch.zeros(0, 2, dtype=torch.long)
    with pytest.raises(DataError, match=r"the training split is empty"):
        Dataset(3, 5, empty, empty, empty, feats, split="warm")
    with pytest.raises(DataError, match=r"train item id 5 is out of range for num_items=5"):
        Dataset(3, 5, torch.tensor([[0, 5]]), empty, empty, feats, split="warm")
    with pytest.raises(DataError, match=r"negative valid user id -1"):
        Dataset(3, 5, pairs, torch.tensor([[-1, 0]]), empty, feats, split="warm")
    with pytest.raises(DataError, match=r"features\['image'\] has 4 rows, expected num_items=5"):
        Dataset(3, 5, pairs, empty, empty, {"image": torch.rand(4, 3)}, split="warm")
    bad = torch.rand(5, 3)
    bad[2, 2] = float("nan")
    with pytest.raises(DataError, match=r"features\['image'\] contains NaN or Inf"):
        Dataset(3, 5, pairs, empty, empty, {"image": bad}, split="warm")
    with pytest.raises(DataError, match=r"Dataset.train must be int64, got torch.int32"):
        Dataset(3, 5, pairs.int(), empty, empty, feats, split="warm")


# ---------------------------------------------------------------------------------------------- checkpoints
def test_truncated_checkpoint_is_refused(tmp_path):
    from motorec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 3, "w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"last\.pt' is damaged or not a motorec checkpoint"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- CLI
def _cli_cases(root: Path):
    """name -> (argv, expected stderr pattern). Folders and files the cases need are made here."""
    import yaml

    from motorec.train.checkpoint import save_checkpoint

    data = _mmrec_folder(root, "shop", _GOOD_INTER)
    bad_inter = _mmrec_folder(root, "broken", "userID\titemID\tx_label\n0\t1\t0\n1\tbanana\t0\n")
    nan_feat = _mmrec_folder(root, "nanfeat", _GOOD_INTER, {"image": _feat(bad=float("nan"))})
    (root / "unknown_key.yaml").write_text(yaml.safe_dump({"model": {"dimension": 64}}))
    (root / "bad_value.yaml").write_text(yaml.safe_dump({"train": {"lr": -0.5}}))
    (root / "not_yaml.yaml").write_text("model: {name: lightgcn\n  dim: [64\n")
    run = root / "run"
    ckpt = run / "checkpoints" / "lightgcn" / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.randn(2000)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:700])  # truncated by a crash of some other tool
    train = ["train", "--model", "lightgcn", "--epochs", "1", "--quiet"]
    return {
        "bad-flag": (["train", "--bogus"], r"unrecognized arguments: --bogus"),
        "bad-choice": (["train", "--model", "transformer"], r"argument --model: invalid choice: 'transformer'"),
        "missing-data-folder": ([*train, "--data", str(root / "nowhere")], r"--data '.*nowhere' is not a directory"),
        "malformed-inter": ([*train, "--data", str(bad_inter), "--split", "warm"],
                            r"broken\.inter: column 'itemID' has a non-integer value 'banana'"),
        "nan-features": ([*train, "--data", str(nan_feat)], r"image_feat\.npy: non-finite value nan"),
        "config-unknown-key": ([*train, "--data", str(data), "--config", str(root / "unknown_key.yaml")],
                               r"unknown key\(s\) in model: \['dimension'\]"),
        "config-bad-value": ([*train, "--data", str(data), "--config", str(root / "bad_value.yaml")],
                             r"train\.lr must be > 0, got -0\.5"),
        "config-not-yaml": ([*train, "--data", str(data), "--config", str(root / "not_yaml.yaml")],
                            r"not_yaml\.yaml' is not valid YAML"),
        "config-missing": ([*train, "--data", str(data), "--config", str(root / "absent.yaml")],
                           r"config file '.*absent\.yaml' does not exist"),
        "negative-epochs": (["train", "--epochs", "-1", "--data", str(data)], r"train\.epochs must be >= 0, got -1"),
        "truncated-checkpoint": ([*train, "--data", str(data), "--split", "warm", "--out", str(run), "--resume"],
                                 r"last\.pt' is damaged or not a motorec checkpoint"),
        "evaluate-not-a-run": (["evaluate", str(root / "shop")], r"is not a motorec run directory"),
    }


# Run as real ``python -m motorec`` processes (exit code, stderr, no traceback from the interpreter itself);
# the other cases run ``motorec.cli.main`` in this process: the same code path without paying ~1.5 s of
# interpreter and torch start-up each.
SUBPROCESS_CASES = ("bad-flag", "missing-data-folder", "malformed-inter", "config-unknown-key", "truncated-checkpoint")
CLI_CASES = ["bad-flag", "bad-choice", "missing-data-folder", "malformed-inter", "nan-features", "config-unknown-key",
             "config-bad-value", "config-not-yaml", "config-missing", "negative-epochs", "truncated-checkpoint",
             "evaluate-not-a-run"]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """``case -> (exit code, stdout, stderr, expected pattern)``; the subprocess cases run concurrently."""
    root = tmp_path_factory.mktemp("cli")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MOTOREC_DEBUG", None)
    cases = _cli_cases(root)
    procs = {name: subprocess.Popen([sys.executable, "-m", "motorec", *cases[name][0]], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in SUBPROCESS_CASES}
    out = {}
    for name, (argv, pattern) in cases.items():
        if name not in procs:
            out[name] = _run_main_inprocess(argv, root) + (pattern,)
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr, cases[name][1])
    return out


def _run_main_inprocess(argv, cwd):
    import contextlib
    import io

    from motorec.cli import main

    err, outs = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outs):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse exits for --help/--version only
                rc = e.code
            except BaseException:  # an escaped exception is what this test exists to catch
                import traceback

                traceback.print_exc(file=err)
                rc = 1
    finally:
        os.chdir(old)
    return rc, outs.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_user_error_is_one_line_exit_2(cli_results, case):
    import re

    rc, stdout, stderr, pattern = cli_results[case]
    assert "Traceback" not in stderr, f"{case}: traceback on stderr:\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert rc == 2, f"{case}: exit code {rc}, stderr:\n{stderr}"
    assert len(lines) == 1, f"{case}: expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert re.match(r"motorec( \w+)?: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), f"{case}: {lines[0]!r} does not match {pattern!r}"
