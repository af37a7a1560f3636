"""Tests of the data layer: embedded Fashion-MNIST subset, IDX and CIFAR loaders, sorting task, downloads.

Selections are checked against subsets computed here by plain loops over the raw labels, normalisation
against the formula on the raw pixels, and the embedded file against a rebuild from the Debian files.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from eos_probe.data import DATASETS, load_dataset
from eos_probe.data import cifar, embedded, fashion
from eos_probe.data.download import download, fetch
from eos_probe.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "data" / "fashion4.npz"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(
    not fashion.has_fashion_files(DEBIAN), reason="Debian package dataset-fashion-mnist not installed"
)


def _raw_idx(path: Path) -> np.ndarray:
    """Independent IDX reader for the checks: fixed header sizes of the two Fashion-MNIST file kinds."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], np.uint8).reshape(dims)


def _first_per_class_loop(labels, classes, n):
    """Reference selection: walk the labels once, keep the first n of each chosen class."""
    taken = {c: 0 for c in classes}
    out = []
    for i, lab in enumerate(labels):
        lab = int(lab)
        if lab in taken and (n is None or taken[lab] < n):
            taken[lab] += 1
            out.append(i)
    return out


# ------------------------------------------------------------------------------------------ fashion4


def test_registry_names():
    assert set(DATASETS) == {"fashion4", "fashion4-halves", "fashion-mnist", "cifar10", "sort"}


def test_fashion4_shapes_labels_meta():
    d = load_dataset("fashion4")
    assert d.kind == "image" and d.num_classes == 4 and d.input_shape == (1, 28, 28)
    assert d.x_train.shape == (1000, 1, 28, 28) and d.x_train.dtype == torch.float32
    assert d.x_test.shape == (4000, 1, 28, 28) and d.x_test.dtype == torch.float32
    assert d.y_train.dtype == torch.int64 and d.y_test.dtype == torch.int64
    assert torch.bincount(d.y_train).tolist() == [250] * 4
    assert torch.bincount(d.y_test).tolist() == [1000] * 4
    json.dumps(d.meta)  # must be JSON-serialisable for the run file
    assert d.meta["sha256"] == fashion.EMBEDDED_SHA256
    assert d.meta["class_names"] == ["T-shirt/top", "Trouser", "Pullover", "Dress"]


def test_fashion4_standardisation():
    d = load_dataset("fashion4")
    assert abs(d.x_train.double().mean().item()) < 1e-6
    assert abs(d.x_train.double().std(unbiased=False).item() - 1.0) < 1e-6
    raw = fashion.read_embedded()
    pix = raw["x_train"].astype(np.float64) / 255.0
    mean, std = d.meta["normalisation"]["mean"][0], d.meta["normalisation"]["std"][0]
    assert mean == pytest.approx(pix.mean(), abs=1e-12) and std == pytest.approx(pix.std(), abs=1e-12)
    expect = (raw["x_test"].astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(d.x_test[:, 0].numpy(), expect, rtol=0, atol=1e-6)
    # Fashion-MNIST classes 0-3 are not black: the mean pixel is well inside (0, 1)
    assert 0.2 < mean < 0.4 and 0.3 < std < 0.4


def test_fashion4_subset_of_embedded():
    d = load_dataset("fashion4", classes=[3, 1], n_per_class=10, n_test_per_class=5)
    raw = fashion.read_embedded()
    idx = _first_per_class_loop(raw["y_train"], [3, 1], 10)
    assert d.y_train.tolist() == [0 if raw["y_train"][i] == 3 else 1 for i in idx]
    assert d.n_test == 10 and d.num_classes == 2
    pix = raw["x_train"][idx].astype(np.float64) / 255.0
    np.testing.assert_allclose(d.x_train[:, 0].numpy(), (pix - pix.mean()) / pix.std(), atol=1e-5)


@needs_debian
def test_fashion4_matches_original_files():
    raw = fashion.read_embedded()
    tr_lab = _raw_idx(DEBIAN / "train-labels-idx1-ubyte.gz")
    te_lab = _raw_idx(DEBIAN / "t10k-labels-idx1-ubyte.gz")
    assert raw["train_index"].tolist() == _first_per_class_loop(tr_lab, [0, 1, 2, 3], 250)
    assert raw["test_index"].tolist() == _first_per_class_loop(te_lab, [0, 1, 2, 3], None)
    tr_img = _raw_idx(DEBIAN / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(raw["x_train"], tr_img[raw["train_index"]])
    np.testing.assert_array_equal(raw["y_train"], tr_lab[raw["train_index"]])


def test_embedded_file_size_and_checksum():
    assert EMBEDDED.stat().st_size <= 2_000_000
    assert hashlib.sha256(EMBEDDED.read_bytes()).hexdigest() == fashion.EMBEDDED_SHA256


def test_modified_copy_is_rejected(tmp_path):
    good = tmp_path / "fashion4.npz"
    shutil.copy(EMBEDDED, good)
    assert fashion.load_fashion4(path=good).n_train == 1000
    blob = bytearray(good.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="sha256"):
        fashion.load_fashion4(path=bad)


@needs_debian
def test_script_reproduces_embedded_file(tmp_path):
    out = tmp_path / "f4.npz"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_embedded_data.py"), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == EMBEDDED.read_bytes()


@needs_debian
@pytest.mark.slow
def test_check_mode_detects_a_changed_file(tmp_path):
    ok, report = embedded.check_embedded(EMBEDDED)
    assert ok, report
    other = tmp_path / "f4.npz"
    arrays = fashion.read_embedded()
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][0] ^= 1
    other.write_bytes(embedded.npz_bytes(arrays))
    ok, report = embedded.check_embedded(other)
    assert not ok and "arrays differ" in report


@needs_debian
def test_full_fashion_defaults_equal_embedded():
    a, b = load_dataset("fashion4"), load_dataset("fashion-mnist")
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.meta["normalisation"] == b.meta["normalisation"]
    assert all(f["matches_reference"] for f in b.meta["files"].values())


# ------------------------------------------------------------------------------- fake IDX directory


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "fm"
    d.mkdir()
    labels = {"train": (np.arange(60) * 7) % 10, "t10k": np.arange(20) % 10}
    images = {k: rng.integers(0, 256, (len(v), 28, 28)) for k, v in labels.items()}
    for split in ("train", "t10k"):
        _write_idx(d / f"{split}-images-idx3-ubyte.gz", images[split])
        _write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels[split])
    return d, images, labels


def test_fake_fashion_dir_subset(fake_fashion):
    d, images, labels = fake_fashion
    with pytest.warns(UserWarning, match="differ from the reference"):
        ds = load_dataset("fashion-mnist", data_dir=d, classes=[2, 0], n_per_class=3)
    idx = _first_per_class_loop(labels["train"], [2, 0], 3)
    assert ds.y_train.tolist() == [0 if labels["train"][i] == 2 else 1 for i in idx]
    pix = images["train"][idx].astype(np.float64) / 255
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), (pix - pix.mean()) / pix.std(), atol=1e-5)
    assert ds.n_test == 4  # two of each class among 20 test labels


def test_corrupt_idx_files(fake_fashion):
    d, _, _ = fake_fashion
    path = d / "train-labels-idx1-ubyte.gz"
    raw = gzip.open(path).read()
    _ = path.write_bytes(gzip.compress(raw[:-5]))  # truncated content
    with pytest.raises(UserError, match="truncated"):
        load_dataset("fashion-mnist", data_dir=d)
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + raw[4:]))  # float IDX, not ubyte
    with pytest.raises(UserError, match="magic"):
        load_dataset("fashion-mnist", data_dir=d)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="damaged"):
        load_dataset("fashion-mnist", data_dir=d)
    path.unlink()
    with pytest.raises(UserError, match="lacks train-labels"):
        load_dataset("fashion-mnist", data_dir=d)


# ----------------------------------------------------------------------------------- fake CIFAR-10


def _fake_cifar(root: Path, per_batch: int = 8, n_test: int = 12) -> dict:
    """A cifar-10-batches-py directory in the official pickle layout, with random pixels."""
    rng = np.random.default_rng(0)
    folder = root / cifar.BASE_FOLDER
    folder.mkdir(parents=True)
    n = 5 * per_batch
    train_labels = (np.arange(n) * 3) % 10
    train = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        entry = {"batch_label": f"training batch {b + 1} of 5", "labels": train_labels[sl].tolist(),
                 "data": train[sl], "filenames": [f"img{i}.png" for i in range(per_batch)]}
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(entry, f, protocol=2)
    test_labels = np.arange(n_test) % 10
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:  # bytes keys, as some re-packers write them
        pickle.dump({b"labels": test_labels.tolist(), b"data": test}, f, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return {"train": train, "train_labels": train_labels, "test": test, "test_labels": test_labels,
            "folder": folder}


def test_fake_cifar_subset_order_normalisation(tmp_path):
    fake = _fake_cifar(tmp_path)
    with pytest.warns(UserWarning, match="differ from the official"):
        d = load_dataset("cifar10", data_dir=tmp_path, classes=[3, 1], n_per_class=3)  # parent dir works
    idx = _first_per_class_loop(fake["train_labels"], [3, 1], 3)
    assert idx == [1, 7, 11, 17, 21, 27]  # spans batches 1-4, interleaved in dataset order
    assert d.y_train.tolist() == [0, 1, 0, 1, 0, 1]
    mean = np.array(cifar.MEAN).reshape(1, 3, 1, 1)
    std = np.array(cifar.STD).reshape(1, 3, 1, 1)
    expect = (fake["train"][idx].reshape(-1, 3, 32, 32) / 255.0 - mean) / std
    np.testing.assert_allclose(d.x_train.numpy(), expect, atol=1e-5)
    tidx = _first_per_class_loop(fake["test_labels"], [3, 1], None)
    expect_test = (fake["test"][tidx].reshape(-1, 3, 32, 32) / 255.0 - mean) / std
    np.testing.assert_allclose(d.x_test.numpy(), expect_test, atol=1e-5)
    assert tidx == [1, 3, 11] and d.y_test.tolist() == [1, 0, 1]  # labels 1, 3, 1 in test order
    assert d.input_shape == (3, 32, 32) and d.num_classes == 2 and d.kind == "image"
    assert d.meta["class_names"] == ["cat", "automobile"]
    assert d.meta["batches_read"] == ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"]
    json.dumps(d.meta)
    # the batches directory itself is accepted too
    with pytest.warns(UserWarning):
        d2 = load_dataset("cifar10", data_dir=fake["folder"], classes=[3, 1], n_per_class=3)
    assert torch.equal(d.x_train, d2.x_train)


def test_fake_cifar_errors(tmp_path, monkeypatch):
    fake = _fake_cifar(tmp_path)
    with pytest.raises(UserError, match="only 4 training images"):
        load_dataset("cifar10", data_dir=tmp_path, n_per_class=5)
    with pytest.raises(UserError, match="classes 0..9"):
        load_dataset("cifar10", data_dir=tmp_path, classes=[0, 10])
    (fake["folder"] / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="data_batch_2"):
        load_dataset("cifar10", data_dir=tmp_path, classes=[3, 1], n_per_class=3)
    # a pickle that would run code is refused, not executed
    evil = pickle.dumps({"data": __import__("os").getcwd}, protocol=2)
    (fake["folder"] / "data_batch_1").write_bytes(evil)
    with pytest.raises(UserError, match="refusing"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nope")
    with pytest.raises(UserError, match="no CIFAR-10 batches"):
        load_dataset("cifar10", data_dir=fake["folder"].parent.parent)
    monkeypatch.setenv("EOS_PROBE_CIFAR_DIR", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="EOS_PROBE_CIFAR_DIR"):
        load_dataset("cifar10")


# ------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="mnist"), "unknown dataset"),
        (dict(name="fashion4", n_per_class=0), "positive integer"),
        (dict(name="fashion4", n_per_class=-3), "positive integer"),
        (dict(name="fashion4", n_per_class=2.5), "positive integer"),
        (dict(name="fashion4", n_per_class=251), "holds 250"),
        (dict(name="fashion4", classes=[4]), "only holds classes 0-3"),
        (dict(name="fashion4", classes=[0, 0]), "twice"),
        (dict(name="fashion4", classes=[]), "empty"),
        (dict(name="fashion4", classes=[-1]), "not one of them"),
        (dict(name="fashion4", classes="01"), "list of class indices"),
        (dict(name="fashion4", data_dir="/tmp"), "takes no data_dir"),
        (dict(name="fashion4", colour=True), "unknown option"),
        (dict(name="fashion-mnist", data_dir="/nonexistent/dir"), "does not exist"),
        (dict(name="sort", classes=[0]), "no classes"),
        (dict(name="sort", n_train=0), "positive integer"),
        (dict(name="sort", vocab=1), "vocab >= 2"),
        (dict(name="sort", width=3), "unknown option"),
    ],
)
def test_bad_inputs_raise_user_error(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(UserError, match=match):
        load_dataset(name, **kwargs)


# --------------------------------------------------------------------------------------- sort task


def test_sort_layout_and_mask():
    d = load_dataset("sort")
    assert d.kind == "sequence" and d.num_classes == 4 and d.input_shape == (15,)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.shape == (1000, 15) and y.shape == (1000, 15)
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert (y[:, :7] == -1).all() and (y[:, 7:] >= 0).all()
        unsorted, answer = x[:, :8], y[:, 7:]
        assert (answer[:, 1:] >= answer[:, :-1]).all()  # sorted
        assert torch.equal(torch.sort(unsorted, dim=1).values, answer)  # same multiset
        assert torch.equal(x[:, 8:], answer[:, :-1])  # x is y shifted by one (teacher forcing)
        assert x.min() >= 0 and x.max() <= 3
    json.dumps(d.meta)


def test_sort_seed_determinism_and_disjoint():
    a, b, c = load_dataset("sort", seed=3), load_dataset("sort", seed=3), load_dataset("sort", seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    train = {tuple(r) for r in a.x_train[:, :8].tolist()}
    test = {tuple(r) for r in a.x_test[:, :8].tolist()}
    assert len(train) == 1000 and len(test) == 1000 and not train & test
    assert a.meta["disjoint"] is True
    # sequences are uniform over tokens: each of 4 symbols ~ 1/4 of 16,000 draws (6 sigma ≈ 330)
    counts = torch.bincount(torch.cat([a.x_train[:, :8], a.x_test[:, :8]]).flatten(), minlength=4)
    assert ((counts - 4000).abs() < 330).all()


def test_sort_options_and_large_space():
    d = load_dataset("sort", length=5, vocab=10, n_train=50, n_test=20, seed=1)
    assert d.x_train.shape == (50, 9) and d.input_shape == (9,) and d.num_classes == 10
    assert (d.y_train[:, :4] == -1).all()
    big = load_dataset("sort", length=9, vocab=6, n_train=300, n_test=300)  # 6^9 > randperm limit
    rows = {tuple(r) for r in torch.cat([big.x_train, big.x_test])[:, :9].tolist()}
    assert len(rows) == 600
    small = load_dataset("sort", length=2, vocab=2, n_train=3, n_test=3)  # 4 possible sequences
    assert small.meta["disjoint"] is False


# ---------------------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_cifar_from_local_server(tmp_path, http_root):
    root, base = http_root
    src = tmp_path / "src"
    _fake_cifar(src)
    archive = root / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / cifar.BASE_FOLDER, arcname=cifar.BASE_FOLDER)
    dest = tmp_path / "dest"

    # wrong checksum: error, and nothing left in the destination
    with pytest.raises(UserError, match="checksum mismatch"):
        download("cifar10", dest, url=f"{base}/cifar.tar.gz", checksum="0" * 32, progress=False)
    assert list(dest.iterdir()) == []
    # missing file on the server: HTTP error
    with pytest.raises(UserError, match="HTTP 404"):
        download("cifar10", dest, url=f"{base}/nothing.tar.gz", checksum="0" * 32, progress=False)
    assert list(dest.iterdir()) == []

    folder = download("cifar10", dest, url=f"{base}/cifar.tar.gz", checksum=_md5(archive), progress=False)
    assert folder == dest / cifar.BASE_FOLDER
    assert sorted(p.name for p in dest.iterdir()) == [cifar.BASE_FOLDER]  # no archive or temp left
    for f in cifar.FILE_MD5:
        assert (folder / f).read_bytes() == (src / cifar.BASE_FOLDER / f).read_bytes()
    with pytest.warns(UserWarning):
        assert load_dataset("cifar10", data_dir=dest, classes=[3, 1], n_per_class=3).n_train == 6
    # already present: no network needed (the bad url would fail otherwise)
    assert download("cifar10", dest, url=f"{base}/nothing", progress=False) == folder


def test_download_fashion_and_cli(tmp_path, http_root, fake_fashion, capsys):
    from eos_probe.cli import main

    root, base = http_root
    src, _, _ = fake_fashion
    sums = {}
    for f in fashion.GZ_MD5:
        shutil.copy(src / f, root / f)
        sums[f] = hashlib.sha256((src / f).read_bytes()).hexdigest()
    dest = tmp_path / "fm-dest"
    # the official md5s do not match the fake files: the first one fails and nothing is kept
    with pytest.raises(UserError, match="checksum mismatch"):
        download("fashion-mnist", dest, url=base, progress=False)
    assert list(dest.iterdir()) == []
    args = ["data", "download", "fashion-mnist", "--dest", str(dest), "--url", base, "--quiet"]
    args += [a for f, h in sums.items() for a in ("--checksum", f"{f}={h}")]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(dest)
    for f in fashion.GZ_MD5:
        assert (dest / f).read_bytes() == (src / f).read_bytes()
    # a network failure is one clear line and exit code 2
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "cifar10", "--dest", str(tmp_path / "c"), "--url",
              f"{base.rsplit(':', 1)[0]}:9/x.tar.gz", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: download of") and "\n" not in err


def test_fetch_sha256_and_bad_checksum_format(tmp_path, http_root):
    root, base = http_root
    (root / "f.bin").write_bytes(b"hello")
    target = tmp_path / "f.bin"
    digest = fetch(f"{base}/f.bin", target, checksum=hashlib.sha256(b"hello").hexdigest(), progress=False)
    assert target.read_bytes() == b"hello" and digest == hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(UserError, match="neither an md5"):
        fetch(f"{base}/f.bin", target, checksum="abc", progress=False)


def test_cli_list_and_check(capsys):
    from eos_probe.cli import main

    with pytest.raises(SystemExit) as e:
        main(["data", "list"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert f"{name}\n" in out
