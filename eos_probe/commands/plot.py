"""`eos-probe plot`: figures from run files (never trains)."""
from __future__ import annotations

import click

KINDS = ("bands", "lambda", "loss", "margin", "spectrum", "commutator", "entk", "cocd-edge", "tasks", "forgetting",
         "all", "paper", "sweep")


@click.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--kind", type=click.Choice(KINDS), default="bands", show_default=True,
              help="bands: Tr(H) and Tr(H)+c·λ_max against the threshold T (Adam: P⁻¹H); lambda: λ_max against "
                   "2/η-type first-order thresholds; loss: training loss; margin: the exact mean-square sum S(η) against 1; spectrum: SLQ density heat map; "
                   "commutator: ‖PH−HP‖/‖PH‖ of Adam runs; entk: ZO-eNTK error against P (probe entk_fidelity); "
                   "cocd-edge: lr/α*(H_t) of cocd runs (probe cocd_edge); tasks: a task sequence's accuracy table (heat map) and each task's accuracy over the boundaries; forgetting: predicted vs measured one-step "
                   "forgetting gap coloured by sign(e_r) (probe forgetting) and the task accuracy table; all: every panel the files have data for; "
                   "paper: the gallery figure, one column (3.3 in, 8 pt) of bands, S(η), commutator ratio and loss on one step axis; "
                   "sweep: a sweep directory's last Tr/T, S(η), η·λ_max, loss, accuracy against η.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output file (.png 300 dpi, .pdf or .svg vector). Default: figures/<run>-<kind>.png in the folder "
                   "of the (first) run file; --kind sweep: DIR/figures/<dir>-sweep.png.")
@click.option("--normalize", is_flag=True, help="bands: divide each run's curvature by its threshold T (all T at 1).")
@click.option("--title", help="Figure title.")
def command(runs: tuple[str, ...], kind: str, out: str | None, normalize: bool, title: str | None) -> None:
    """Plot one or several RUN.h5 files (e.g. an η sweep on one axis)."""
    if kind == "sweep":
        from ..errors import UserError
        from ..plot.sweep import sweep_figure

        if len(runs) != 1:
            raise UserError("--kind sweep takes one sweep directory (the --out-dir of `eos-probe sweep`)")
        click.echo(str(sweep_figure(runs[0], out, title=title)))
        return
    from ..plot.figures import make_figure

    path = make_figure(list(runs), kind, out, normalize=normalize, title=title)
    click.echo(str(path))
