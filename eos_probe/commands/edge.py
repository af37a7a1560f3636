"""`eos-probe edge`: predicted critical step size at a checkpoint against the measured edge."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("edge")
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--step", type=int, required=True, help="Checkpoint step N (the latest checkpoint, or one kept by train --keep-checkpoints-every).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the continuation runs on the network go (the sweep engines).")
@click.option("--address", help="Ray: join this cluster ('auto' or HOST:PORT).")
@click.option("--workers", type=int, help="Step sizes tested at once per bisection round (default: CPU cores).")
@click.option("--seeds", type=int, default=4, show_default=True, help="Network: continuation runs (direction seeds) per step size.")
@click.option("--horizon", type=int, default=100, show_default=True, help="Network: steps of each continuation run.")
@click.option("--blowup", type=float, default=10.0, show_default=True, help="Network: a seed is unstable when its loss exceeds this × L(θ_N).")
@click.option("--rounds", type=int, default=3, show_default=True, help="Network: bisection rounds after the bracket is found.")
@click.option("--quad-seeds", type=int, default=512, show_default=True, help="Quadratic model: Monte-Carlo seeds per step size.")
@click.option("--quad-steps", type=int, default=200, show_default=True, help="Quadratic model: steps per simulation.")
@click.option("--quad-rounds", type=int, default=4, show_default=True, help="Quadratic model: refinement rounds.")
@click.option("--k", "top_k", type=int, default=20, show_default=True, help="Top eigenvalues by Lanczos (models above --dense-max).")
@click.option("--n-matvec", type=int, default=40, show_default=True, help="Trace estimator budget (models above --dense-max).")
@click.option("--dense-max", type=int, default=1500, show_default=True, help="Dense Hessian up to this many parameters.")
@click.option("--no-network", is_flag=True, help="Only the prediction and the quadratic model.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Result JSON (default RUN.edge<N>.json next to the run).")
def command(run, step, engine, address, workers, seeds, horizon, blowup, rounds, quad_seeds, quad_steps, quad_rounds,
            top_k, n_matvec, dense_max, no_network, json_out) -> None:
    """Predicted η* (docs/theory.md §2 on the measured spectrum) vs the measured largest stable η, on the local
    quadratic model and on the network itself (continuation runs from the checkpoint)."""
    from ..errors import UserError
    from ..sweep.edge import edge_experiment, one_line

    for name, v in (("--seeds", seeds), ("--horizon", horizon), ("--rounds", rounds), ("--quad-steps", quad_steps),
                    ("--quad-rounds", quad_rounds), ("--k", top_k), ("--n-matvec", n_matvec)):
        if v < 1:
            raise UserError(f"{name} must be a positive integer, got {v}")
    if quad_seeds < 16 or quad_seeds % 8:
        raise UserError(f"--quad-seeds must be a multiple of 8 and at least 16, got {quad_seeds}")
    if not blowup > 1:
        raise UserError(f"--blowup must be greater than 1, got {blowup}")
    if address is not None and engine != "ray":
        raise click.UsageError("--address needs --engine ray")
    out = Path(json_out) if json_out else Path(f"{Path(run).with_suffix('')}.edge{step}.json")
    if not out.parent.is_dir():
        raise UserError(f"--json-out {out}: directory {out.parent} does not exist")
    res = edge_experiment(run, step, network=not no_network, engine=engine, workers=workers, address=address,
                          k=top_k, n_matvec=n_matvec, dense_max=dense_max, quad_seeds=quad_seeds,
                          quad_steps=quad_steps, quad_rounds=quad_rounds, seeds=seeds, horizon=horizon,
                          blowup=blowup, rounds=rounds, echo=lambda s: click.echo(s, err=True))
    out.write_text(json.dumps(res, indent=1, default=float))
    click.echo(one_line(res))
    click.echo(str(out))
