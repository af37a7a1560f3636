"""The bad-input matrix: every CLI verb fed malformed values ends in one line on stderr naming the
problem, exit code 2, no traceback, and no file created or modified."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from eos_probe.cli import COMMANDS, main

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _fixtures(root: Path) -> None:
    """Files the cases refer to: an existing output, bad configs, a non-directory, a read-only dir."""
    (root / "exists.h5").write_bytes(b"precious")
    (root / "unknown_key.toml").write_text('model = "cnn"\nlearning_rate = 0.1\n')
    (root / "typo_key.toml").write_text('model = "cnn"\nprobe_evry = 10\n')
    (root / "typo_sweep.toml").write_text('[train]\nstpes = 10\n[sweep]\nlr = [0.1]\n')
    (root / "wrong_type.toml").write_text('steps = "many"\n')
    (root / "broken.toml").write_text("steps = [\n")
    (root / "a_file").write_text("not a directory")
    (root / "not_hdf5.h5").write_bytes(b"\x00" * 64)
    np.save(root / "spec2d.npy", np.ones((2, 2)))
    ro = root / "readonly"
    ro.mkdir()
    ro.chmod(0o555)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


TRAIN = ["train", "--steps", "2", "--quiet", "--probe", "none"]
CASES = [
    # train
    (TRAIN + ["--model", "resnet9000"], "unknown model"),
    (TRAIN + ["--optimizer", "lbfgs"], "unknown optimizer"),
    (TRAIN + ["--lr", "-0.1"], "lr"),
    (TRAIN + ["--lr", "0"], "lr"),
    (TRAIN + ["--lr", "nan"], "lr"),
    (TRAIN + ["--lr", "fast"], "lr"),
    (TRAIN + ["--steps", "-5"], "steps"),
    (TRAIN + ["--queries", "0"], "queries"),
    (TRAIN + ["--mu", "-1e-3"], "mu"),
    (TRAIN + ["--momentum", "1.2", "--optimizer", "gdm"], "momentum"),
    (TRAIN + ["--momentum", "nan", "--optimizer", "gdm"], "momentum"),
    (TRAIN + ["--n-per-class", "0"], "n_per_class"),
    (TRAIN + ["--classes", "0,x"], "classes"),
    (TRAIN + ["--classes", "0,17"], "class"),
    (TRAIN + ["--microbatch", "-3"], "microbatch"),
    (TRAIN + ["--probe-every", "0"], "probe_every"),
    (TRAIN + ["--device", "tpu"], "device"),
    (TRAIN + ["--model-arg", "hidden=-3"], "hidden"),
    (TRAIN + ["--model-arg", "depth"], "KEY=VALUE"),
    (TRAIN + ["--model-arg", "warp_speed=9"], "warp_speed"),
    (TRAIN + ["--data", "imagenet"], "imagenet"),
    (TRAIN + ["--data", "cifar10", "--data-dir", "{root}/missing_dir"], "missing_dir"),
    (TRAIN + ["--data", "cifar10", "--data-dir", "{root}/a_file"], "a_file"),
    (TRAIN + ["--data", "fashion-mnist", "--data-dir", "{root}/readonly"], "readonly"),
    (TRAIN + ["--model", "lstm", "--data", "fashion4"], "sequence"),
    (TRAIN + ["--config", "{root}/unknown_key.toml"], "learning_rate"),
    (TRAIN + ["--config", "{root}/wrong_type.toml"], "steps"),
    # typos get their near match (difflib), not a list of every valid name
    (TRAIN + ["--config", "{root}/typo_key.toml"], "unknown key 'probe_evry'; did you mean 'probe_every'?"),
    (TRAIN + ["--model", "cnnn"], "did you mean 'cnn'?"),
    (TRAIN + ["--optimizer", "zo-gdd"], "did you mean 'zo-gd'?"),
    (TRAIN + ["--optimizer", "Adam"], "did you mean 'adam'?"),
    (TRAIN[:-1] + ["lambda_mx"], "unknown probe metric 'lambda_mx'; choose from"),
    (TRAIN[:-1] + ["lamda_max"], "did you mean 'lambda_max'?"),
    (TRAIN[:-1] + ["trace:n_matvecs=10"], "did you mean 'n_matvec'?"),
    (TRAIN + ["--model-arg", "hiden=8"], "did you mean 'hidden'?"),
    (TRAIN + ["--data", "fashion5"], "did you mean 'fashion4'?"),
    (TRAIN + ["--config", "{root}/broken.toml"], "TOML"),
    (TRAIN + ["--config", "{root}/missing.toml"], "missing.toml"),
    (TRAIN + ["--out", "{root}/missing_dir/run.h5"], "missing_dir"),
    (TRAIN + ["--out", "{root}/exists.h5"], "--overwrite"),
    (TRAIN + ["--out", "{root}/readonly/run.h5"], "not writable"),
    (TRAIN + ["--out", "/proc/x.h5"], "/proc"),
    (TRAIN + ["--out", "/sys/x.h5"], "/sys"),
    (TRAIN + ["--restart"], "--resume"),
    (["train", "--resume", "{root}/missing.h5"], "missing.h5"),
    (["train", "--resume", "{root}/exists.h5", "--lr", "0.1"], "--resume"),
    # bands
    (["bands", "--optimizer", "zo-gd", "--lr", "-1"], "rate"),
    (["bands", "--optimizer", "zo-sgd", "--lr", "0.1"], "optimizer"),
    (["bands", "--optimizer", "zo-gd", "--lr", "nan"], "lr"),
    (["bands", "--optimizer", "zo-gd", "--lr", "0.1", "--queries", "0"], "queries"),
    (["bands", "--optimizer", "zo-gdm", "--lr", "0.1", "--momentum", "1.5"], "momentum"),
    (["bands", "--optimizer", "zo-gd", "--lr", "0.1", "--spectrum", "{root}/missing.npy"], "missing.npy"),
    (["bands", "--optimizer", "zo-gd", "--lr", "0.1", "--spectrum", "{root}/broken.toml"], "broken.toml"),
    (["bands", "--optimizer", "zo-gd", "--lr", "0.1", "--trace", "-3", "--lambda-max", "1"], "trace"),
    # data
    (["data", "download", "imagenet"], "imagenet"),
    (["data", "make-embedded", "--source", "{root}/missing_dir"], "missing_dir"),
    # inspect
    (["inspect", "{root}/missing.h5"], "missing.h5"),
    (["inspect", "{root}/readonly"], "readonly"),
    # plot
    (["plot", "{root}/missing.h5", "--kind", "bands"], "missing.h5"),
    (["plot", "{root}/exists.h5", "--kind", "histogram"], "histogram"),
    # bench
    (["bench", "--model", "resnet9000"], "resnet9000"),
    (["bench", "--repeats", "0"], "repeats"),
    (["bench", "--n-per-class", "-2"], "n-per-class"),
    (["bench", "--device", "tpu"], "tpu"),
    (["bench", "--model-arg", "depth"], "KEY=VALUE"),
    (["bench", "--model", "cnn", "--model-arg", "widths=nan"], "widths"),
    (["plot", "{root}/missing.h5", "{root}/exists.h5", "--kind", "loss"], "missing.h5"),
    (["inspect", "{root}/missing_dir/x.h5"], "x.h5"),
    (["data", "download", "cifar10", "--dest", "{root}/a_file"], "a_file"),
    # sweep, sweep-summary, edge
    (["sweep", "--config", "{root}/missing.toml"], "missing.toml"),
    (["sweep", "--config", "{root}/broken.toml"], "TOML"),
    (["sweep", "--config", "{root}/unknown_key.toml"], "[sweep]"),
    (["sweep", "--config", "{root}/typo_sweep.toml"], "unknown key 'stpes'; did you mean 'steps'?"),
    (["sweep-summary", "{root}/missing_dir"], "missing_dir"),
    (["sweep-summary", "{root}"], "sweep.json"),
    (["edge", "{root}/missing.h5", "--step", "3"], "missing.h5"),
    (["edge", "{root}/exists.h5", "--step", "3", "--seeds", "0"], "--seeds"),
]
if IS_ROOT:  # root writes into read-only directories and reads anything
    CASES = [c for c in CASES if "readonly" not in " ".join(c[0])]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_bad_input(args, needle, tmp_path, capsys, monkeypatch) -> None:
    if args[0] not in COMMANDS:
        pytest.fail(f"verb {args[0]} is not registered")
    monkeypatch.chdir(tmp_path)
    _fixtures(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([a.replace("{root}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert needle.lower() in err.lower(), err
    assert _snapshot(tmp_path) == before, "a file was created or modified"


def test_the_matrix_covers_every_verb() -> None:
    assert {c[0][0] for c in CASES} == set(COMMANDS)


def test_a_config_typo_is_one_short_line(tmp_path, capsys) -> None:
    """The near match replaces the list of ~60 valid keys, which buried it."""
    _fixtures(tmp_path)
    with pytest.raises(SystemExit):
        main(TRAIN + ["--config", str(tmp_path / "typo_key.toml")])
    err = capsys.readouterr().err.strip()
    assert err.endswith("unknown key 'probe_evry'; did you mean 'probe_every'?") and "valid keys" not in err
