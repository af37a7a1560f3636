"""`eos-probe bands`: the stability threshold, its bounds, S(η), η* and a verdict (docs/theory.md §2–3).

Imports numpy/scipy only (no torch), so it answers instantly.
"""
from __future__ import annotations

import json
import math
import os
import warnings

import click
import numpy as np

from ._options import finite
from ..errors import UserError
from ..presets import DEFAULT_DIRECTIONS, DEFAULT_MOMENTUM
from ..theory import stability as st
from ..theory.states import classify



def load_spectrum(path: str) -> np.ndarray:
    """Eigenvalues from a .npy (1-D eigenvalues or a 2-D symmetric matrix) or a text file of numbers."""
    if not os.path.isfile(path):
        raise UserError(f"spectrum file {path!r} does not exist; pass a .npy of eigenvalues")
    try:
        arr = np.load(path, allow_pickle=False) if path.endswith(".npy") else np.loadtxt(path, ndmin=1)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read spectrum file {path!r} ({type(e).__name__}); pass a .npy of eigenvalues") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iuf":
        raise UserError(f"spectrum file {path!r} holds {arr.dtype} values; it needs real numbers")
    arr = arr.astype(float)
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1] and arr.shape[0] > 1:
        if not np.allclose(arr, arr.T, rtol=1e-8, atol=1e-12 * max(1.0, float(np.abs(arr).max()))):
            raise UserError(f"spectrum file {path!r} holds a non-symmetric matrix; pass eigenvalues or a symmetric H")
        return np.linalg.eigvalsh((arr + arr.T) / 2)
    if arr.ndim > 1 and sum(n > 1 for n in arr.shape) > 1:
        raise UserError(f"spectrum file {path!r} has shape {arr.shape}; pass a 1-D array of eigenvalues")
    arr = arr.ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise UserError(f"spectrum file {path!r} is empty or holds NaN/inf")
    return arr


def _num(x):
    """JSON-safe number: ±inf as the strings "inf"/"-inf", nan as null."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


def compute(optimizer: str, lr: float, momentum, momentum_style, queries: int, directions: str, dim,
            trace, lambda_max, spectrum: np.ndarray | None, negative: str = "unstable") -> dict:
    """Everything `eos-probe bands` reports, as plain Python values (used by the text and JSON output)."""
    if spectrum is not None and (trace is not None or lambda_max is not None):
        raise UserError("give either --spectrum or --trace/--lambda-max, not both")
    if (trace is None) != (lambda_max is None):
        raise UserError("--trace and --lambda-max go together; give both (or --spectrum)")
    if trace is not None and (trace < 0 or lambda_max < 0):
        raise UserError(f"--trace ({trace:g}) and --lambda-max ({lambda_max:g}) must be non-negative: the "
                        "bands bound the curvature of a minimum (a negative trace means an indefinite Hessian, "
                        "where they cannot show stability)")
    if spectrum is not None:
        lam = spectrum[spectrum >= 0] if negative == "ignore" else spectrum
        if lam.size == 0:
            raise UserError("the spectrum has no non-negative eigenvalue left to analyse")
        trace, lambda_max = float(np.sum(lam)), float(np.max(lam))
        if dim is None:
            dim = int(lam.size)
    with warnings.catch_warnings():  # the band lists its warnings; print each once
        warnings.simplefilter("ignore", st.ApproximationWarning)
        b = st.band(lr, optimizer, queries, momentum, momentum_style, directions=directions, dim=dim)
        out: dict = {"band": b.as_dict(), "trace": trace, "lambda_max": lambda_max, "ms_sum": None,
                     "critical_lr": None, "critical_lr_bounds": None, "verdict": None, "state": None,
                     "basis": None, "evidence": None, "note": None, "bounds_verdict": None, "margins": None,
                     "warnings": list(b.warnings)}
        if trace is None:
            return out
        v = st.verdict(trace, lambda_max, lr, optimizer, queries, momentum, momentum_style,
                       directions=directions, dim=dim)
        out["bounds_verdict"] = v.label
        out["margins"] = {"necessary": v.necessary_margin, "sufficient": v.sufficient_margin,
                          "lambda_max": v.lambda_max_margin}
        out["critical_lr_bounds"] = list(st.critical_lr_bounds(
            trace, lambda_max, optimizer, queries, momentum, momentum_style, directions=directions, dim=dim))
        s_val = s_neg = None
        if spectrum is not None:
            kw = dict(directions=directions, dim=dim, negative=negative)
            s_val = st.ms_sum(spectrum, lr, optimizer, queries, momentum, momentum_style, **kw)
            out["ms_sum"] = s_val
            out["critical_lr"] = st.critical_lr(spectrum, optimizer, queries, momentum, momentum_style, **kw)
            if negative == "ignore" and b.kind == "mean-square":
                s_neg = float(np.sum(np.maximum(-spectrum, 0.0))) / b.threshold
        # the one verdict (eos_probe.theory.states): the exact S where the spectrum gave it, else the bounds
        one = classify(b, s=s_val, s_err=0.0, s_neg=s_neg, s_neg_err=0.0, trace=trace, lambda_max=lambda_max)
        out.update(verdict=one.verdict, state=one.state, basis=one.basis, evidence=one.evidence, note=one.note)
    return out


def render(out: dict) -> str:
    """The human-readable report."""
    b = out["band"]
    lines = [f"{b['optimizer']}  lr={b['lr']:g}" + (f"  momentum={b['momentum']:g} ({b['momentum_style']})"
                                                     if b["momentum"] else "")
             + (f"  q={b['queries']}  directions={b['directions']}" if b["kind"] == "mean-square" else ""),
             f"convention: {b['convention']}"]
    tr, lm = out["trace"], out["lambda_max"]
    lam_q = b["lambda_max_quantity"]
    if b["kind"] == "classical":
        lines.append(f"threshold:   {lam_q} < T = {_fmt(b['threshold'])}   (classical edge of stability)")
    else:
        c = b["c"]
        lines.append(f"threshold:   T = {_fmt(b['threshold'])}   c = {c:.6g}")
        nec = f"necessary:   {b['quantity']} < T"
        suf = f"sufficient:  {b['quantity']} + c·{lam_q} < T"
        per = f"per mode:    {lam_q} < {_fmt(b['lambda_max_limit'])}"
        if tr is not None:
            m = out["margins"]
            nec += f"        {_fmt(tr)} < {_fmt(b['threshold'])}: {'holds' if m['necessary'] > 0 else 'FAILS'}"
            suf += (f"   {_fmt(tr)} + {c:.4g}·{_fmt(lm)} = {_fmt(tr + c * lm)}: "
                    f"{'holds' if m['sufficient'] > 0 else 'fails'}")
            per += f"   {_fmt(lm)}: {'holds' if m['lambda_max'] > 0 else 'FAILS'}"
        lines += [nec, suf, per]
    if tr is not None and b["kind"] == "classical":
        lines.append(f"{lam_q} = {_fmt(lm)}: {'below' if out['margins']['lambda_max'] > 0 else 'ABOVE'} the threshold")
    if out["ms_sum"] is not None:
        lines.append(f"S(lr) = {_fmt(out['ms_sum'])}   (exact; stable iff S < 1)" if b["kind"] == "mean-square"
                     else f"lr·lambda_max / limit = {_fmt(out['ms_sum'])}   (stable iff < 1)")
    if out["critical_lr"] is not None:
        lines.append(f"lr* = {_fmt(out['critical_lr'])}   (largest stable step size for this spectrum)")
    elif out["state"] == "indefinite":
        lines.append("lr* bounds: none (Tr and lambda_max bound lr* only for H without negative eigenvalues)")
    elif out["critical_lr_bounds"] is not None:
        lo, hi = out["critical_lr_bounds"]
        lines.append(f"lr* = {_fmt(lo)}   (lambda_max decides)" if lo == hi
                     else f"lr* in [{_fmt(lo)}, {_fmt(hi)}]   (from Tr and lambda_max alone)")
    if out["verdict"] is not None:
        lines.append(f"verdict: {out['verdict']} - {out['evidence']}")
        if out["note"]:
            lines.append(f"         {out['note']}")
        if out["basis"] != "bounds" and out["bounds_verdict"] != out["verdict"] and b["kind"] == "mean-square":
            lines.append(f"         (bounds alone: {out['bounds_verdict']})")
    return "\n".join(lines)


@click.command("bands")
@click.option("--optimizer", required=True, type=click.Choice(list(st.OPTIMIZERS)), help="Optimizer preset.")
@click.option("--lr", required=True, type=float, callback=finite, help="Step size η.")
@click.option("--momentum", type=float, callback=finite,
              help=f"β of gdm, β1 of adam (default {DEFAULT_MOMENTUM:g}; 0 for gd).")
@click.option("--momentum-style", type=click.Choice(list(st.MOMENTUM_STYLES)),
              help="gdm convention: heavy_ball (default, torch SGD) or ema; adam is always ema.")
@click.option("--queries", type=int, default=1, show_default=True, help="ZO two-point queries per step q.")
@click.option("--directions", type=click.Choice(list(st.DIRECTIONS)), default=DEFAULT_DIRECTIONS,
              show_default=True,
              help="ZO direction law (sphere needs the dimension, rademacher uses it: --dim or --spectrum).")
@click.option("--dim", type=int, help="Parameter count d (sphere/rademacher directions).")
@click.option("--trace", type=float, callback=finite, help="Tr(H) (Adam: Tr(P^-1 H)); give with --lambda-max.")
@click.option("--lambda-max", "lambda_max", type=float, callback=finite, help="λ_max(H) (Adam: of P^-1 H).")
@click.option("--spectrum", "spectrum_file", type=str,
              help=".npy of eigenvalues (or a symmetric matrix) of H (Adam: of P^-1 H); gives S(η) and η*.")
@click.option("--ignore-negative", is_flag=True,
              help="Drop negative eigenvalues of --spectrum instead of calling the iterates unstable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (inf as the string \"inf\").")
def command(optimizer, lr, momentum, momentum_style, queries, directions, dim, trace, lambda_max,
            spectrum_file, ignore_negative, as_json) -> None:
    """Print the stability threshold T, both bounds, S(η) and η* for one optimizer and step size.

    Without curvature input only the band is printed; with --trace/--lambda-max the bounds decide, in their own
    words (stable (sufficient bound) / band: necessary bound only / unstable (necessary bound violated), or
    indefinite when Tr < λ_max); with --spectrum the exact S(η) decides.
    """
    spectrum = load_spectrum(spectrum_file) if spectrum_file is not None else None
    out = compute(optimizer, lr, momentum, momentum_style, queries, directions, dim, trace, lambda_max,
                  spectrum, "ignore" if ignore_negative else "unstable")
    if as_json:
        def conv(o):
            if isinstance(o, dict):
                return {k: conv(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [conv(v) for v in o]
            if isinstance(o, (float, np.floating)):
                return _num(o)
            return o
        click.echo(json.dumps(conv(out), allow_nan=False))
        return
    click.echo(render(out))
    for w in out["warnings"]:
        click.echo(f"warning: {w}", err=True)
