"""`eos-probe bench`: speed ratios of this machine, measured side by side in one process."""
from __future__ import annotations

import inspect
import json
from collections.abc import Callable

import click

from ..bench_items import ITEMS
from ..budget import DEFAULT_PROBE_MEMORY
from ..config import DEVICES, DTYPES
from ._options import GeneratedHelp, parse_kv


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


def _default(name: str) -> str:
    """`run_bench`'s default of a keyword, as help shows it (its signature is the one statement of it)."""
    from ..bench import run_bench

    value = inspect.signature(run_bench).parameters[name].default
    return "automatic" if value is None else str(value)


def _models() -> dict:
    """The model registry, imported when help is shown (it imports torch)."""
    from ..models import MODELS

    return MODELS


def _help(text: str, name: str) -> Callable[[], str]:
    return lambda: f"{text} (default {_default(name)})."


@click.command("bench")
@click.option("--model", cls=GeneratedHelp, help_from=lambda: f"Model to time (default {_default('model')}): "
              + " | ".join(_models()) + ", or a plug-in path/to/file.py:factory.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE", help="Model size override (repeatable).")
@click.option("--n-per-class", type=int, callback=_positive, help="Training examples per class (default: the full default data).")
@click.option("--device", type=click.Choice(list(DEVICES)), cls=GeneratedHelp, help_from=_help("Device", "device"))
@click.option("--dtype", type=click.Choice(list(DTYPES)), cls=GeneratedHelp, help_from=_help("Parameter dtype", "dtype"))
@click.option("--repeats", type=int, callback=_positive, cls=GeneratedHelp,
              help_from=_help("Interleaved timing rounds per ratio (more = steadier, slower)", "repeats"))
@click.option("--queries", type=int, callback=_positive, cls=GeneratedHelp,
              help_from=_help("q of the batched-query item", "queries"))
@click.option("--copies", type=int, callback=_positive, cls=GeneratedHelp, help_from=_help("K of the sweep item", "copies"))
@click.option("--microbatch", type=int, callback=_positive, help="Micro-batch size (default: automatic).")
@click.option("--cocd-block", type=int, callback=_positive, help="B of the CoCD item (default: 1% of d).")
@click.option("--threads", type=int, callback=_positive, help="torch intra-op threads (default: torch's choice).")
@click.option("--probe/--no-probe", "probe", default=None,
              help="Also run one default probe: probe_forward_equivalents and probe_peak_bytes (default: on).")
@click.option("--optimizer", cls=GeneratedHelp, help_from=_help("Whose default probe to measure", "optimizer"))
@click.option("--probe-memory", help=f"Probe peak-memory budget, e.g. 2GB (default {DEFAULT_PROBE_MEMORY / 2**30:g}GB).")
@click.option("--only", multiple=True, type=click.Choice(list(ITEMS)),
              help="Run only this item (repeatable; default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def command(model_args, threads, only, as_json, **kwargs) -> None:
    """Time a ZO step against two forwards, a FO step against forward+backward, batched q, sweeps and HVPs."""
    import torch

    from ..bench import format_table, run_bench

    if threads:
        torch.set_num_threads(threads)
    log = None if as_json else (lambda s: click.echo(f"  timing {s} ...", err=True))
    given = {k: v for k, v in kwargs.items() if v is not None}
    res = run_bench(model_args=parse_kv("--model-arg", model_args), log=log, only=only or None, **given)
    click.echo(json.dumps(res) if as_json else format_table(res))
