"""`eos-probe train`: train one run full-batch and write its HDF5 file."""
from __future__ import annotations

import math
import sys

import click

from ..budget import DEFAULT_PROBE_MEMORY
from ..config import DEFAULT_PROBE_BUDGET, DEVICES, DTYPES, LOG_EVERY_FO, LOG_EVERY_ZO, TrainConfig, load_toml
from ..errors import DivergedError, UserError
from ..loss_names import LOSSES
from ..presets import OPTIONS
from ._options import (GeneratedHelp, config_default, datasets_help, finite, losses_help, lr_help, metrics_help,
                       models_help, option_help, optimizer_options, parse_kv, presets_help)


def _images():
    """`eos_probe.data.images`, imported when help is shown (it imports torch)."""
    from ..data import images

    return images


def _checkpointing():
    """`eos_probe.trainer.checkpointing`, imported when help is shown (it imports torch)."""
    from ..trainer import checkpointing

    return checkpointing


def _float_list(ctx, param, value):
    """A float, or a comma list of floats (a sweep trained in one process): float | list[float] | None."""
    if value is None:
        return None
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    try:
        floats = [float(v) for v in items]
    except ValueError:
        raise click.BadParameter(f"expects a number or a comma list of numbers, got {value!r}") from None
    if not floats:
        raise click.BadParameter(f"expects a number or a comma list of numbers, got {value!r}")
    for f in floats:
        if not math.isfinite(f):
            raise click.BadParameter(f"must be a finite number, got {f}")
    return floats[0] if len(floats) == 1 else floats



@click.command("train")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with run settings; flags override it.")
@click.option("--model", cls=GeneratedHelp, help_from=models_help)
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE", help="Model size override, e.g. hidden=64 (repeatable).")
@click.option("--data", cls=GeneratedHelp, help_from=datasets_help)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Directory of the dataset files (cifar10, fashion-mnist).")
@click.option("--data-arg", "data_args", multiple=True, metavar="KEY=VALUE", help="Dataset option, e.g. n_train=200 for sort (repeatable).")
@click.option("--n-per-class", type=int, cls=GeneratedHelp, help_from=lambda: "Training images per class (default: the "
              f"reference {_images().DEFAULT_N_PER_CLASS}).")
@click.option("--classes", cls=GeneratedHelp, help_from=lambda: "Comma list of class indices (default "
              + ",".join(map(str, _images().DEFAULT_CLASSES)) + ").")
@click.option("--loss", type=click.Choice(list(LOSSES)), cls=GeneratedHelp, help_from=losses_help)
@click.option("--optimizer", help=presets_help())
@click.option("--lr", callback=_float_list, help=lr_help())
@click.option("--momentum", callback=_float_list, help=option_help(OPTIONS["momentum"]) + " A comma list sweeps it.")
@optimizer_options(skip=("momentum",))
@click.option("--optimizer-arg", "optimizer_args", multiple=True, metavar="KEY=VALUE",
              help="An optimizer option that has no flag of its own (repeatable).")
@click.option("--steps", type=int, help=f"Number of updates (default {config_default('steps')}). With --resume: extend the run to this many.")
@click.option("--seed", type=int, help=f"Run seed: model init, directions, probes (default {config_default('seed')}).")
@click.option("--device", type=click.Choice(list(DEVICES)), help=f"Device (default {config_default('device')}).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), help=f"Parameter dtype (default {config_default('dtype')}).")
@click.option("--microbatch", type=int, help="Evaluate the full batch in chunks of this many examples (default: a shape-only rule).")
@click.option("--log-every", type=int, help=f"Log exact loss/accuracy every k steps (default {LOG_EVERY_FO} first order, "
              f"{LOG_EVERY_ZO} zeroth order).")
@click.option("--checkpoint-every", type=int, cls=GeneratedHelp, help_from=lambda: "Also checkpoint every M steps (always: "
              f"after every probe and every {_checkpointing().CHECKPOINT_SECONDS / 60:g} minutes of work).")
@click.option("--keep-checkpoints-every", type=int, help="Also keep the checkpoint of every N-th step as RUN.h5.step<N>.ckpt (for `eos-probe edge --step`).")
@click.option("--probe-every", help=f"'{config_default('probe_every')}' (default): certified probes on the wall-time budget --probe-budget, triggered by "
              "curvature and loss events, tracked in between; or N: every N steps (deterministic).")
@click.option("--probe-budget", type=float, callback=finite, help=f"With --probe-every auto: the probe's share of the wall "
              f"time (default {DEFAULT_PROBE_BUDGET:g}).")
@click.option("--threads", type=int, help="CPU threads of the run (default: the cores not busy with other work at "
              "the start, at least 1; a resume keeps the run's count; see eos_probe.build.default_threads).")
@click.option("--probe", "probe_metrics", cls=GeneratedHelp, help_from=metrics_help)
@click.option("--zo-trace-window", type=int, help=f"ZO runs: the largest window (logged samples) of /train/zo_trace, the free Tr(H) monitor; it adapts below that (default {config_default('zo_trace_window')}).")
@click.option("--probe-memory", help=f"Peak-memory budget of one probe, e.g. 2GB or 512MB (default {DEFAULT_PROBE_MEMORY / 2**30:g}GB); HVPs and Jacobians are chunked to fit.")
@click.option("--divergence-factor", type=float, callback=finite, help=f"Stop when loss > factor × initial loss (default {config_default('divergence_factor'):g}).")
@click.option("--tasks", help="Task sequence of class splits, e.g. \"0,1;2,3\" (tasks split by ';', dataset class ids by ','): trains them in turn and writes the accuracy table /tasks/* (docs/theory.md §5b).")
@click.option("--task-steps", help="Updates per task, comma list, one per task (default --steps each; 0 = already trained, e.g. with --init-from).")
@click.option("--mask-old-logits/--no-mask-old-logits", default=None, help="While training a task, only its own classes' outputs are in the loss: earlier and later tasks' are masked (default: on for ce, off for mse).")
@click.option("--init-from", type=click.Path(dir_okay=False), help="Start θ from this finished RUN.h5's final checkpoint (e.g. continue its task sequence).")
@click.option("--out", type=click.Path(dir_okay=False), help="Run file (default runs/<model>-<optimizer>-lr<lr>-s<seed>.h5).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run file.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue RUN.h5 from its last checkpoint.")
@click.option("--restart", is_flag=True, help="With --resume: run a file that has no checkpoint again from step 0.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--list-groups", is_flag=True, help="Print the model's parameter groups (name, parameter count, parameter names; the names hybrid [groups.<name>] tables take) and exit without training.")
def command(config_file, model_args, data_args, optimizer_args, classes, probe_metrics, overwrite, resume, restart,
            quiet, list_groups, **flags) -> None:
    """Train a model full-batch and write an HDF5 run file (loss every step, curvature every N)."""
    values = _values(config_file, flags, model_args=model_args, data_args=data_args,
                     optimizer_args=optimizer_args, classes=classes, probe_metrics=probe_metrics)
    if list_groups:
        if resume:
            raise UserError("--list-groups lists the groups of a model to be trained; it does not go with --resume")
        _list_groups(TrainConfig(**values))
        return
    if resume and set(values) - {"steps"}:
        extra = ", ".join(sorted(set(values) - {"steps"}))
        raise UserError(f"--resume continues a run with its recorded settings; only --steps may be given (got {extra})")
    sweep = {k: values.pop(k) for k in ("lr", "momentum") if isinstance(values.get(k), list)}
    if resume and sweep:
        raise UserError("--resume continues one run file; resume the files of a sweep one at a time")
    if restart and not resume:
        raise UserError("--restart goes with --resume (it reruns a run file that has no checkpoint)")
    results = _run(values, sweep, resume=resume, restart=restart, overwrite=overwrite, progress=not quiet)
    if sweep:
        for r in results:
            click.echo(_summary(r) if r.status == "finished" else
                       f"{r.path}: diverged: {r.error} (the file keeps everything logged before)")
        click.echo(f"sweep of {len(results)} copies in one process: {results[0].seconds:.1f} s")
        if all(r.status == "diverged" for r in results):
            sys.exit(DivergedError.exit_code)
        return
    click.echo(_summary(results[0]))


def _values(config_file: str | None, flags: dict, *, model_args: tuple, data_args: tuple, optimizer_args: tuple,
            classes: str | None, probe_metrics: str | None) -> dict:
    """The config values: the TOML file's, overridden by the flags given."""
    values = load_toml(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(values.get("rise_blocks"), str) and values["rise_blocks"].isdigit():
        values["rise_blocks"] = int(values["rise_blocks"])
    for key, flag, items in (("model_args", "--model-arg", model_args), ("data_args", "--data-arg", data_args),
                             ("optimizer_args", "--optimizer-arg", optimizer_args)):
        if items:
            values[key] = {**values.get(key, {}), **parse_kv(flag, items)}
    if classes is not None:
        try:
            values["classes"] = [int(c) for c in classes.split(",") if c.strip()]
        except ValueError:
            raise UserError(f"--classes expects comma-separated integers, got {classes!r}") from None
    if probe_metrics is not None:
        values["probe"] = [] if probe_metrics.strip().lower() == "none" else [
            m.strip() for m in probe_metrics.split(",") if m.strip()]
    return values


def _run(values: dict, sweep: dict, *, resume: str | None, restart: bool, overwrite: bool, progress: bool) -> list:
    """Train (a run, a resumed run or an in-process sweep); a divergence or a signal ends in one line."""
    from ..interrupt import RunInterrupted
    from ..train import sweep_configs, train, train_sweep

    try:
        if resume:
            return [train(None, resume=resume, steps=values.get("steps"), progress=progress, restart=restart)]
        if sweep:
            cfgs = sweep_configs(TrainConfig(**values), sweep.get("lr"), sweep.get("momentum"))
            return train_sweep(cfgs, overwrite=overwrite, progress=progress)
        return [train(TrainConfig(**values), overwrite=overwrite, progress=progress)]
    except DivergedError as e:
        click.echo(f"error: {e} (run file keeps everything logged before; reason recorded)", err=True)
        sys.exit(e.exit_code)
    except RunInterrupted as e:
        if e.step is None:  # before the run started: nothing to resume
            click.echo("interrupted before the run started", err=True)
        else:
            click.echo(e.message(), err=True)
        sys.exit(e.exit_code)


def _list_groups(cfg: TrainConfig) -> None:
    """Print each parameter group of the config's model: name, parameter count, parameter names.

    Builds the data (for the input shape and class count) and the model only — not the optimizer, so a
    hybrid config whose group names are wrong can still list the right ones. Works for plug-in models too.
    """
    from dataclasses import replace

    from ..data import DATASETS, default_dataset, load_dataset
    from ..groups import describe_groups
    from ..models import make_model, model_kind
    from ..tasks import dataset_classes, parse_tasks

    name = cfg.data or default_dataset(model_kind(cfg.model))
    classes = cfg.classes
    if cfg.tasks:  # the model's outputs are those of the classes the run loads (every task's)
        classes = dataset_classes(replace(cfg, tasks=[list(t) for t in parse_tasks(cfg.tasks)]), name in DATASETS)
    ds = load_dataset(name, data_dir=cfg.data_dir, n_per_class=cfg.n_per_class, classes=classes, seed=cfg.seed,
                      **cfg.data_args)
    model, _ = make_model(cfg.model, input_shape=tuple(ds.input_shape), num_outputs=ds.num_classes, seed=cfg.seed,
                          **cfg.model_args)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for group, count, names in describe_groups(model):
        click.echo(f"{group}: {count} parameters in {len(names)} tensors")
        for n in names:
            click.echo(f"  {n} {'×'.join(map(str, shapes[n])) or 'scalar'}")


def _summary(res) -> str:
    """The final line of a run: its total steps (this session's too after a resume), speed, probe share,
    final loss and, for classification, accuracy."""
    session = f" ({res.session_steps} in this session)" if res.resumed else ""
    acc = "" if res.regression else f", accuracy {res.final_accuracy:.3f}"
    return (f"{res.path}: {res.status}, {res.steps_done} steps{session} in {res.seconds:.1f} s "
            f"({res.steps_per_second:.2f} steps/s, probe {res.probe_seconds:.1f} s = "
            f"{100 * res.probe_share:.0f}% of wall time), final loss {res.final_loss:.4g}{acc}")
