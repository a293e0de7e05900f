"""homeostasis: the vectorised learners against a per-example port of the reference code (lrh.py / lrr.py),
seed independence, the matched control, the datasets (generated, IDX, CSV, Parquet) and the verdict logic."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.base import ParamError
from components.studies._datasets import ClassificationData
from components.studies.homeostasis import Homeostasis

SMALL = dict(epochs=2, hidden1=12, hidden2=9, batch=5, memory=10)


def _data(n=120, nv=40, f=6, k=10, seed=0):
    return ClassificationData(n_train=n, n_val=nv, features=f, classes=k, seed=seed).load()


def _reference(method, swaps, data, seed, s):
    """The reference algorithm example by example (column vectors, as lrh.py / lrr.py), with the component's
    random draws (init, per-epoch orders, coin flips, swap pairs) taken in the same order."""
    x, lab, xv, labv = data["x"], data["y"].copy(), data["x_val"], data["y_val"].copy()
    n, f = x.shape
    k, m, nb = 10, s.batch, n // s.batch
    rng = np.random.default_rng([seed, 5])
    dims = [(s.hidden1, f), (s.hidden2, s.hidden1), (k, s.hidden2)]
    w = [rng.normal(size=(o, i)) * np.sqrt(2 / i) for o, i in dims]
    b = [rng.normal(size=(o, 1)) for o, _ in dims]
    perms = [rng.permutation(n) for _ in range(s.epochs)]
    coins = rng.random((s.epochs, nb))
    pairs = [rng.choice(k, 2, replace=False) for _ in range(s.epochs * swaps)]
    elu = lambda z: np.where(z > 0, z, np.exp(np.minimum(z, 0)) - 1)  # noqa: E731
    delu = lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))  # noqa: E731

    def fwd(ws, bs, a1):
        z2 = ws[0] @ a1 + bs[0]
        a2 = elu(z2)
        z3 = ws[1] @ a2 + bs[1]
        a3 = elu(z3)
        z4 = ws[2] @ a3 + bs[2]
        p = np.exp(z4 - z4.max())
        return z2, a2, z3, a3, p / p.sum()

    eta, step, etas, accs, swapped = s.eta0, s.eta0 / 10, [], [], 0
    for ep in range(s.epochs):
        order = perms[ep]
        for j in range(nb):
            gw, gb = [np.zeros_like(v) for v in w], [np.zeros_like(v) for v in b]
            for i in range(j * m, (j + 1) * m):
                a1 = x[order[i]][:, None]
                z2, a2, z3, a3, a4 = fwd(w, b, a1)
                guess = int(np.argmax(a4))
                y = np.zeros((k, 1))
                y[lab[order[i]]] = 1
                e4 = a4 - y
                e3 = w[2].T @ e4 * delu(z3)
                e2 = w[1].T @ e3 * delu(z2)
                for layer, (e, a) in enumerate(((e2, a1), (e3, a2), (e4, a3))):
                    gw[layer] += e @ a.T
                    gb[layer] += e
                if i % m == 0 and method == "lrr" and i != 0 and coins[ep, j] > 0.5:
                    eta += step if lab[order[i]] >= 5 else -step
                    eta = 1e-8 if eta < 0 else eta
                if i % m == 0 and method == "lrh" and i > s.memory:
                    def acc(lr):
                        ws = [v - lr / m * g for v, g in zip(w, gw)]
                        bs = [v - lr / m * g for v, g in zip(b, gb)]
                        return np.mean([np.argmax(fwd(ws, bs, x[order[t]][:, None])[-1]) == lab[order[t]]
                                        for t in range(i - s.memory, i)])
                    lr2 = eta + (step if guess >= 5 else -step)
                    if acc(1e-8 if lr2 < 0 else lr2) > acc(eta):
                        eta += step if lab[order[i]] >= 5 else -step
                        eta = 1e-8 if eta < 0 else eta
            for layer in range(3):
                w[layer] -= eta / m * gw[layer]
                b[layer] -= eta / m * gb[layer]
            etas.append(eta)
            while swapped < (ep * nb + j + 1) * swaps // nb:
                a, c = pairs[swapped]
                for arr in (lab, labv):
                    ia, ic = arr == a, arr == c
                    arr[ia], arr[ic] = c, a
                swapped += 1
        accs.append(np.mean([np.argmax(fwd(w, b, xv[t][:, None])[-1]) == labv[t] for t in range(len(labv))]))
    return np.array(etas), np.array(accs)


@pytest.mark.parametrize("method, swaps, eta0", [("lrh", 3, 0.5), ("lrr", 4, 0.001), ("lrc", 2, 0.001)])
def test_vectorised_learners_match_the_reference_loop(method, swaps, eta0):
    """eta0 = 0.5 for LRH: with a larger step one example's trial update does change recent accuracy."""
    data = _data()
    study = Homeostasis(method=method, swaps_per_epoch=swaps, seeds=(3,), eta0=eta0, **SMALL)
    out = study.simulate(data)
    etas, accs = _reference(method, swaps, data, 3, study)
    assert np.allclose([p[1] for p in out["eta_curve"][0]], etas, rtol=1e-12)  # 48 batches: curve = every batch
    assert np.allclose(out["val_acc"][0], accs)
    if method != "lrc":
        assert len(set(etas.round(12))) > 1  # the learning rate did move


def test_each_seed_depends_only_on_itself_and_runs_are_deterministic():
    data = _data()
    both = Homeostasis(method="lrr", swaps_per_epoch=5, seeds=(0, 1), **SMALL).simulate(data)
    one = Homeostasis(method="lrr", swaps_per_epoch=5, seeds=(1,), **SMALL).simulate(data)
    again = Homeostasis(method="lrr", swaps_per_epoch=5, seeds=(0, 1), **SMALL).simulate(data)
    assert one["val_acc"][0] == both["val_acc"][1] and one["eta_curve"][0] == both["eta_curve"][1]
    assert again["val_acc"] == both["val_acc"] and again["eta_mean"] == both["eta_mean"]


def test_matched_control_takes_the_lrr_mean_eta():
    data = _data()
    lrc = Homeostasis(method="lrc", swaps_per_epoch=2, seeds=(0, 1), **SMALL).simulate(data)
    matched = Homeostasis(method="lrc_matched", swaps_per_epoch=2, seeds=(0, 1), **SMALL).simulate(data, lrc)
    assert matched["val_acc"] == lrc["val_acc"]  # LRC's mean η is η₀: the control reduces to LRC
    with pytest.raises(ParamError, match="eta_from .* is required by lrc_matched"):
        Homeostasis(method="lrc_matched", seeds=(0, 1), **SMALL).simulate(data)
    with pytest.raises(ParamError, match="expected \\[0\\]"):
        Homeostasis(method="lrc_matched", seeds=(0,), **SMALL).simulate(data, lrc)
    with pytest.raises(ParamError, match="duplicates"):
        Homeostasis(seeds=(1, 1))


def _write_idx(path, array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_csv_and_parquet_datasets(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 12)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 4, 4)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 3, n))
    data = ClassificationData(str(tmp_path), n_train=20, n_val=10).load()
    assert data["x"].shape == (20, 16) and data["x"].max() <= 1.0 and set(data["y"]) <= {0, 1, 2}
    table = pa.table({"a": rng.normal(size=50), "b": rng.integers(0, 5, 50), "label": rng.choice([3, 7], 50)})
    pq.write_table(table, tmp_path / "t.parquet")
    data = ClassificationData(str(tmp_path / "t.parquet"), n_train=30, n_val=20).load()
    assert data["x"].shape == (30, 2) and set(data["y"]) | set(data["y_val"]) == {0, 1}  # labels remapped 0..K-1
    (tmp_path / "t.csv").write_text("f1,f2,cls\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(40)))
    data = ClassificationData(str(tmp_path / "t.csv"), label_column="cls", n_train=25, n_val=10).load()
    assert data["x"].shape == (25, 2)
    assert ClassificationData(str(tmp_path / "t.csv"), "cls", 25, 10).fingerprint() != \
        ClassificationData(str(tmp_path / "t.parquet"), "label", 25, 10).fingerprint()


@pytest.mark.parametrize("source, label, msg", [("nope.parquet", "label", "does not exist"),
                                                ("t.csv", "label", "no label column 'label'"),
                                                ("t.csv", "cls", "feature columns must be numeric"),
                                                ("t.txt", "label", "expected a .parquet or .csv")])
def test_bad_datasets_fail_with_the_problem_named(tmp_path, source, label, msg):
    (tmp_path / "t.csv").write_text("f1,name,cls\n1,a,0\n2,b,1\n" * 20)
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ParamError, match=msg):
        ClassificationData(str(tmp_path / source), label_column=label, n_train=10, n_val=5).load()


def _points(lrh_gain, lrr_gain):
    points = []
    for rate in (0, 5, 20):
        for method, gain in (("lrc", 0.0), ("lrh", lrh_gain * rate), ("lrr", lrr_gain), ("lrc_matched", lrr_gain)):
            accs = [0.5 + gain + 0.002 * s for s in range(4)]
            points.append({"params": {"method": method, "swaps_per_epoch": rate},
                           "result": {"seeds": [0, 1, 2, 3], "mean_val_acc": accs}})
    return points


def test_verdict_is_paired_over_seeds():
    good = {c.name: c.passed for c in Homeostasis.verdict(_points(lrh_gain=0.002, lrr_gain=0.0))}
    assert good["lrh_beats_lrc_at_5"] and good["lrh_beats_lrc_at_20"] and good["advantage_largest_at_highest_rate"]
    assert good["lrh_beats_lrr_at_20"] and good["lrr_gain_is_larger_eta"]
    bad = {c.name: c.passed for c in Homeostasis.verdict(_points(lrh_gain=-0.002, lrr_gain=0.05))}
    assert not bad["lrh_beats_lrc_at_5"] and not bad["lrh_beats_lrr_at_20"]
    assert not bad["advantage_largest_at_highest_rate"]
