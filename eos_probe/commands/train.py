"""`eos-probe train`: train one run full-batch and write its HDF5 file."""
from __future__ import annotations

import ast
import math
import sys

import click

from ..config import DEFAULT_PROBE_BUDGET, TrainConfig, load_toml
from ._options import finite
from ..errors import DivergedError, UserError, did_you_mean
from ..zo_monitor import DEFAULT_WINDOW as ZO_WINDOW
from ..presets import DEFAULT_MOMENTUM, DIFFERENCES, DIRECTIONS, MOMENTUM_STYLES


def _parse_kv(flag: str, items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


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
@click.option("--model", help="mlp | cnn | resnet | vit | lstm | mamba (default cnn), or your own: path/to/file.py:factory, package.module:factory or an `eos_probe.models` entry point; factory(input_shape, num_outputs, **model_args) returns an nn.Module.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE", help="Model size override, e.g. hidden=64 (repeatable).")
@click.option("--data", help="fashion4 (embedded, default for images) | fashion-mnist | cifar10 | sort (default for sequences), or your own: path/to/file.npz (arrays x, y, optional x_test, y_test; integer y = classes, float y = regression) or an `eos_probe.datasets` entry point.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Directory of the dataset files (cifar10, fashion-mnist).")
@click.option("--data-arg", "data_args", multiple=True, metavar="KEY=VALUE", help="Dataset option, e.g. n_train=200 for sort (repeatable).")
@click.option("--n-per-class", type=int, help="Training images per class (default: the reference 250).")
@click.option("--classes", help="Comma list of class indices (default 0,1,2,3).")
@click.option("--loss", type=click.Choice(["mse", "ce"]), help="mse (0.5·Σ(f−onehot)², default) or ce.")
@click.option("--optimizer", help="gd | gdm | adam | zo-gd | zo-gdm | zo-adam | cocd | bccd | zo-gd-nm | rise | zo-fc | hybrid (default zo-gd); zo-fc and hybrid take [groups.<name>] tables from --config.")
@click.option("--lr", callback=_float_list, help="Step size η, or a comma list to train a sweep of copies together, one file each (default per optimizer: gd 0.05, gdm 0.005, adam 1e-3, zo-gd 1e-3, zo-gdm 1e-4, zo-adam 1e-4, cocd/bccd 0.01).")
@click.option("--momentum", callback=_float_list,
              help=f"β of gdm, β1 of adam (default {DEFAULT_MOMENTUM:g}); a comma list sweeps it.")
@click.option("--momentum-style", type=click.Choice(list(MOMENTUM_STYLES)), help="gdm convention (default heavy_ball).")
@click.option("--beta2", type=float, callback=finite, help="Adam β2 (default 0.999).")
@click.option("--eps", type=float, callback=finite, help="Adam ε (default 1e-8).")
@click.option("--queries", type=int, help="ZO two-point queries per step q (default 1).")
@click.option("--mu", type=float, callback=finite, help="ZO smoothing radius μ (default 1e-3).")
@click.option("--directions", type=click.Choice(list(DIRECTIONS)), help="ZO direction law.")
@click.option("--difference", type=click.Choice(list(DIFFERENCES)), help="ZO finite difference.")
@click.option("--norm-match", is_flag=True, default=None, help="Two-point ZO: divide the estimate by sqrt(kappa) so E|v|^2 = |g|^2 (kappa = (q+d+1)/q gaussian, (q+d-1)/q sphere and rademacher; zo-gd-nm always does).")
@click.option("--rise-blocks", help="rise: 'tensor' (one block per parameter tensor, default) or a chunk length N.")
@click.option("--cocd-block", type=int, help="cocd/bccd: coordinates B refreshed per step (default ceil(1% of d)).")
@click.option("--cocd-gamma", type=float, callback=finite, help="cocd: decay gamma of stale estimates in [0, 1] (default 0.99; bccd: 0).")
@click.option("--cocd-eps", type=float, callback=finite, help="cocd/bccd: central-difference radius epsilon (default 0.1).")
@click.option("--cocd-memory", type=int, help="cocd/bccd: keep only the m most recent estimates, B <= m < d (default: all).")
@click.option("--weight-decay", type=float, callback=finite, help="cocd/bccd: step on G + wd*theta (default 0).")
@click.option("--steps", type=int, help="Number of updates (default 300). With --resume: extend the run to this many.")
@click.option("--seed", type=int, help="Run seed: model init, directions, probes (default 0).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device (default auto).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), help="Parameter dtype (default float32).")
@click.option("--microbatch", type=int, help="Evaluate the full batch in chunks of this many examples.")
@click.option("--log-every", type=int, help="Log exact loss/accuracy every k steps (default 1 FO, 10 ZO).")
@click.option("--checkpoint-every", type=int, help="Also checkpoint every M steps (always: after every probe and every 5 minutes of work).")
@click.option("--keep-checkpoints-every", type=int, help="Also keep the checkpoint of every N-th step as RUN.h5.step<N>.ckpt (for `eos-probe edge --step`).")
@click.option("--probe-every", help="'auto' (default): certified probes on the wall-time budget --probe-budget, triggered by "
              "curvature and loss events, tracked in between; or N: every N steps (deterministic).")
@click.option("--probe-budget", type=float, callback=finite, help=f"With --probe-every auto: the probe's share of the wall "
              f"time (default {DEFAULT_PROBE_BUDGET:g}).")
@click.option("--threads", type=int, help="CPU threads of the run (default: 1 for small models, where more only "
              "synchronise, else all cores; see eos_probe.train.default_threads).")
@click.option("--probe", "probe_metrics", help="Comma list of probe metrics with options as name:key=value, or 'none'. Metrics: lambda_max, top_k, trace, density, ms_margin, dir_curvature; Adam runs also precond_lambda_max, precond_trace, precond_density, commutator_ratio; cocd runs cocd_edge, cocd_staleness; entk_fidelity (ZO eNTK on a probe batch); task sequences curvature_excess, forgetting, flatness; zo_descent; hybrid runs hybrid_bands. Default: lambda_max,trace, + ms_margin for ZO, + precond_lambda_max, precond_trace, commutator_ratio for Adam; README 'Probing' lists the options.")
@click.option("--zo-trace-window", type=int, help=f"ZO runs: the largest window (logged samples) of /train/zo_trace, the free Tr(H) monitor; it adapts below that (default {ZO_WINDOW}).")
@click.option("--probe-memory", help="Peak-memory budget of one probe, e.g. 2GB or 512MB (default 2GB); HVPs and Jacobians are chunked to fit.")
@click.option("--divergence-factor", type=float, callback=finite, help="Stop when loss > factor × initial loss (default 1000).")
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
def command(config_file, model_args, data_args, classes, probe_metrics, overwrite, resume, restart, quiet,
            list_groups, **flags) -> None:
    """Train a model full-batch and write an HDF5 run file (loss every step, curvature every N)."""
    from ..interrupt import RunInterrupted
    from ..train import train

    values = load_toml(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(values.get("rise_blocks"), str) and values["rise_blocks"].isdigit():
        values["rise_blocks"] = int(values["rise_blocks"])
    if model_args:
        values["model_args"] = {**values.get("model_args", {}), **_parse_kv("--model-arg", model_args)}
    if data_args:
        values["data_args"] = {**values.get("data_args", {}), **_parse_kv("--data-arg", data_args)}
    if classes is not None:
        try:
            values["classes"] = [int(c) for c in classes.split(",") if c.strip()]
        except ValueError:
            raise UserError(f"--classes expects comma-separated integers, got {classes!r}") from None
    if probe_metrics is not None:
        values["probe"] = [] if probe_metrics.strip().lower() == "none" else [
            m.strip() for m in probe_metrics.split(",") if m.strip()]
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
    try:
        if resume:
            res = train(None, resume=resume, steps=values.get("steps"), progress=not quiet, restart=restart)
        elif sweep:
            from ..train import sweep_configs, train_sweep

            cfgs = sweep_configs(TrainConfig(**values), sweep.get("lr"), sweep.get("momentum"))
            results = train_sweep(cfgs, overwrite=overwrite, progress=not quiet)
        else:
            res = train(TrainConfig(**values), overwrite=overwrite, progress=not quiet)
    except DivergedError as e:
        click.echo(f"error: {e} (run file keeps everything logged before; reason recorded)", err=True)
        sys.exit(e.exit_code)
    except RunInterrupted as e:
        if e.step is None:  # before the run started: nothing to resume
            click.echo("interrupted before the run started", err=True)
        else:
            click.echo(e.message(), err=True)
        sys.exit(e.exit_code)
    if sweep:
        for r in results:
            click.echo(_summary(r) if r.status == "finished" else
                       f"{r.path}: diverged: {r.error} (the file keeps everything logged before)")
        click.echo(f"sweep of {len(results)} copies in one process: {results[0].seconds:.1f} s")
        if all(r.status == "diverged" for r in results):
            sys.exit(DivergedError.exit_code)
        return
    click.echo(_summary(res))


def _list_groups(cfg: TrainConfig) -> None:
    """Print each parameter group of the config's model: name, parameter count, parameter names.

    Builds the data (for the input shape and class count) and the model only — not the optimizer, so a
    hybrid config whose group names are wrong can still list the right ones. Works for plug-in models too.
    """
    import torch

    from ..data import load_dataset
    from ..groups import describe_groups
    from ..models import MODELS, build_model
    from ..plugins import build_plugin_model, is_model_plugin

    plugin = cfg.model not in MODELS and is_model_plugin(cfg.model)
    if cfg.model not in MODELS and not plugin:
        raise UserError(f"unknown model {cfg.model!r}; choose one of {', '.join(sorted(MODELS))}, "
                        "path/to/file.py:factory or package.module:factory" + did_you_mean(cfg.model, MODELS))
    sequence = not plugin and MODELS[cfg.model].kind == "sequence"
    name = cfg.data or ("sort" if sequence else "fashion4")
    classes = cfg.classes
    if cfg.tasks:  # the model's outputs are those of the classes the run loads (every task's)
        from dataclasses import replace

        from ..data import DATASETS
        from ..tasks import dataset_classes, parse_tasks

        classes = dataset_classes(replace(cfg, tasks=[list(t) for t in parse_tasks(cfg.tasks)]), name in DATASETS)
    ds = load_dataset(name, data_dir=cfg.data_dir, n_per_class=cfg.n_per_class, classes=classes, seed=cfg.seed,
                      **cfg.data_args)
    shape = tuple(ds.input_shape)
    if plugin:
        model, _ = build_plugin_model(cfg.model, input_shape=shape, num_outputs=ds.num_classes, seed=cfg.seed,
                                      dtype=torch.float32, **cfg.model_args)
    else:
        model = build_model(cfg.model, input_shape=shape, num_classes=ds.num_classes, seed=cfg.seed,
                            **cfg.model_args)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for name, count, names in describe_groups(model):
        click.echo(f"{name}: {count} parameters in {len(names)} tensors")
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
