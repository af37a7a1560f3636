"""`eos-probe sweep` and `eos-probe sweep-summary`: a grid of runs, locally or on Ray, and its table."""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("sweep")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="TOML: base run settings (keys of `train --config`) and a [sweep] table of lists (+ optional zip groups).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a process pool on this machine; ray: one Ray task per point or pack (pip install -e '.[ray]').")
@click.option("--address", help="Ray only: join a running cluster ('auto' or HOST:PORT); default: start a local one.")
@click.option("--workers", type=int, help="Concurrent tasks (default: number of CPU cores, at most the number of tasks).")
@click.option("--cpus-per-task", type=float, help="Ray: CPUs requested per task (default cores/workers); also its torch threads.")
@click.option("--gpus-per-task", type=float, default=0.0, show_default=True, help="Ray: GPUs requested per task.")
@click.option("--out-dir", type=click.Path(file_okay=False), help="Output directory (default runs/<config name>).")
@click.option("--no-pack", is_flag=True, help="One process per point, even for points that could train stacked.")
def command(config_file, engine, address, workers, cpus_per_task, gpus_per_task, out_dir, no_pack) -> None:
    """Run every point of a sweep that is not done yet (finished points are skipped, killed ones resumed)."""
    from ..sweep import load_sweep_config, run_sweep

    spec = load_sweep_config(config_file)
    out = Path(out_dir) if out_dir else Path("runs") / Path(config_file).stem
    if address is not None and engine != "ray":
        raise click.UsageError("--address needs --engine ray")
    rep = run_sweep(spec, out, engine=engine, workers=workers, address=address, pack=not no_pack,
                    cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, echo=click.echo)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(rep.counts.items()))
    click.echo(f"{out}: {len(rep.entries)} points ({counts}); {rep.tasks} tasks on {rep.engine} in {rep.seconds:.1f} s; "
               f"manifest {out / 'sweep.json'}")
    if rep.counts.get("failed") or rep.counts.get("interrupted"):
        sys.exit(1)


@click.command("sweep-summary")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Also write the table as CSV.")
def summary_command(directory, csv_out) -> None:
    """Per point: settings, status, divergence step, last Tr/T, S(η), η·λ_max, final loss/accuracy, probe share."""
    from ..sweep.summary import format_summary, load_sweep

    df = load_sweep(directory)
    click.echo(format_summary(df))
    if csv_out:
        df.to_csv(csv_out, index=False)
        click.echo(csv_out)
