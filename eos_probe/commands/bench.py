"""`eos-probe bench`: speed ratios of this machine, measured side by side in one process (issue 6)."""
from __future__ import annotations

import json

import click

from ..bench_items import ITEMS
from .train import _parse_kv


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


@click.command("bench")
@click.option("--model", default="cnn", show_default=True, help="Model to time (mlp, cnn, resnet, vit, lstm, mamba).")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE", help="Model size override (repeatable).")
@click.option("--n-per-class", type=int, callback=_positive, help="Training examples per class (default: the full default data).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True, callback=_positive,
              help="Interleaved timing rounds per ratio (more = steadier, slower).")
@click.option("--queries", type=int, default=8, show_default=True, callback=_positive, help="q of the batched-query item.")
@click.option("--copies", type=int, default=3, show_default=True, callback=_positive, help="K of the sweep item.")
@click.option("--microbatch", type=int, callback=_positive, help="Micro-batch size (default: automatic).")
@click.option("--cocd-block", type=int, callback=_positive, help="B of the CoCD item (default: 1% of d).")
@click.option("--threads", type=int, callback=_positive, help="torch intra-op threads (default: torch's choice).")
@click.option("--probe/--no-probe", "probe", default=True, show_default=True,
              help="Also run one default probe: probe_forward_equivalents and probe_peak_bytes.")
@click.option("--optimizer", default="zo-gd", show_default=True, help="Whose default probe to measure.")
@click.option("--probe-memory", help="Probe peak-memory budget, e.g. 2GB (default 2GB).")
@click.option("--only", multiple=True, type=click.Choice(list(ITEMS)),
              help="Run only this item (repeatable; default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def command(model, model_args, n_per_class, device, dtype, repeats, queries, copies, microbatch, cocd_block,
            threads, probe, optimizer, probe_memory, only, as_json) -> None:
    """Time a ZO step against two forwards, a FO step against forward+backward, batched q, sweeps and HVPs."""
    import torch

    from ..bench import format_table, run_bench

    if threads:
        torch.set_num_threads(threads)
    log = None if as_json else (lambda s: click.echo(f"  timing {s} ...", err=True))
    res = run_bench(model, model_args=_parse_kv("--model-arg", model_args), n_per_class=n_per_class, device=device, dtype=dtype,
                    repeats=repeats, queries=queries, copies=copies, microbatch=microbatch, log=log,
                    cocd_block=cocd_block, probe=probe, probe_memory=probe_memory, optimizer=optimizer,
                    only=only or None)
    click.echo(json.dumps(res) if as_json else format_table(res))
