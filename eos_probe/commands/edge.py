"""`eos-probe edge`: predicted critical step size at a checkpoint against the measured edges (docs/edge.md)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..sweep.edge_predict import DENSE_MAX


def _numbers(name: str, text: str, kind=float) -> tuple:
    from ..errors import UserError

    try:
        out = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not out or any(not x > 0 for x in out):
        raise UserError(f"{name} must be positive numbers, got {text!r}")
    return out


@click.command("edge")
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--step", type=int, required=True, help="Checkpoint step N (the latest checkpoint, or one kept by train --keep-checkpoints-every).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the continuation runs on the network go (the sweep engines).")
@click.option("--address", help="Ray: join this cluster ('auto' or HOST:PORT).")
@click.option("--workers", type=int, default=1, show_default=True, help="Continuation tasks (one per step size) run at once.")
@click.option("--seeds", type=int, default=8, show_default=True, help="Network: continuation runs (direction seeds) per step size.")
@click.option("--horizon", type=int, default=640, show_default=True, help="Network: steps of each continuation run (the longest horizon).")
@click.option("--horizons", default="20,40,80,160,320,640", show_default=True, help="Horizons at which the network's edge is reported.")
@click.option("--factors", default="3,10,100", show_default=True, help="Blow-up factors f: a seed blows up when its loss exceeds f x L(theta_N).")
@click.option("--eta-grid", default="0.1,1.6,11", show_default=True, help="Network step sizes: LOW,HIGH,N, a geometric grid from LOW to HIGH times the predicted eta*.")
@click.option("--surrogate-at", default="0.5", show_default=True, help="Step sizes (fractions of eta*) at which the network runs beside its Taylor surrogates.")
@click.option("--no-surrogate", is_flag=True, help="Skip the Taylor-surrogate comparison and the local probes.")
@click.option("--no-taylor", is_flag=True, help="Skip the indefinite Taylor model's growth-rate measurement.")
@click.option("--quad-seeds", type=int, default=512, show_default=True, help="Models: Monte-Carlo seeds per step size (4 resampled groups).")
@click.option("--quad-steps", type=int, default=200, show_default=True, help="Models: steps per simulation.")
@click.option("--quad-rounds", type=int, default=1, show_default=True, help="Models: k-section rounds after the first grid (0.9-1.1 eta*).")
@click.option("--k", "top_k", type=int, default=20, show_default=True, help="Top Ritz values taken exactly (models above --dense-max).")
@click.option("--n-probes", type=int, default=10, show_default=True, help="SLQ probes of the deflated rest (models above --dense-max).")
@click.option("--n-steps", type=int, default=60, show_default=True, help="Lanczos steps per SLQ probe (models above --dense-max).")
@click.option("--dense-max", type=int, default=DENSE_MAX, show_default=True, help="Dense Hessian up to this many parameters (docs/edge.md: where the dense path stops being affordable).")
@click.option("--no-network", is_flag=True, help="Only the prediction and the model edges.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Result JSON (default RUN.edge<N>.json next to the run).")
def command(run, step, engine, address, workers, seeds, horizon, horizons, factors, eta_grid, surrogate_at,
            no_surrogate, no_taylor, quad_seeds, quad_steps, quad_rounds, top_k, n_probes, n_steps, dense_max,
            no_network, json_out) -> None:
    """Predicted eta* (docs/theory.md §2 on the positive part of the spectrum, with the path used) against the
    growth-rate edges of the local models and the network's edge as a function of the horizon (docs/edge.md)."""
    from ..errors import UserError
    from ..sweep.edge import edge_experiment
    from ..sweep.edge_report import report

    for name, v in (("--seeds", seeds), ("--horizon", horizon), ("--quad-steps", quad_steps), ("--workers", workers),
                    ("--quad-rounds", quad_rounds), ("--k", top_k), ("--n-steps", n_steps)):
        if v < 1:
            raise UserError(f"{name} must be a positive integer, got {v}")
    if n_probes < 2:
        raise UserError(f"--n-probes must be at least 2 (a standard error), got {n_probes}")
    if quad_seeds < 16 or quad_seeds % 8:
        raise UserError(f"--quad-seeds must be a multiple of 8 and at least 16, got {quad_seeds}")
    fs = _numbers("--factors", factors)
    if any(f <= 1 for f in fs):
        raise UserError(f"--factors must be greater than 1, got {factors}")
    hs = _numbers("--horizons", horizons, int)
    grid = _numbers("--eta-grid", eta_grid)
    if len(grid) != 3 or grid[0] >= grid[1] or int(grid[2]) < 2:
        raise UserError(f"--eta-grid must be LOW,HIGH,N with LOW < HIGH and N >= 2, got {eta_grid}")
    at = () if no_surrogate else _numbers("--surrogate-at", surrogate_at)
    if address is not None and engine != "ray":
        raise click.UsageError("--address needs --engine ray")
    out = Path(json_out) if json_out else Path(f"{Path(run).with_suffix('')}.edge{step}.json")
    if not out.parent.is_dir():
        raise UserError(f"--json-out {out}: directory {out.parent} does not exist")
    res = edge_experiment(run, step, network=not no_network, surrogate=not no_surrogate, engine=engine,
                          workers=workers, address=address, k=top_k, n_probes=n_probes, n_steps=n_steps,
                          dense_max=dense_max, quad_seeds=quad_seeds, quad_steps=quad_steps, quad_rounds=quad_rounds,
                          taylor=not no_taylor, seeds=seeds, horizon=horizon, horizons=hs, factors=fs,
                          eta_grid=(grid[0], grid[1], int(grid[2])), surrogate_at=at,
                          echo=lambda s: click.echo(s, err=True))
    out.write_text(json.dumps(res, indent=1, default=float))
    click.echo(report(res))
    click.echo(str(out))
