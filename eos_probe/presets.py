"""What an optimizer is: one frozen :class:`Preset` per optimizer name, the one place that knows.

Everything that used to re-derive a preset's properties from its name (``removeprefix("zo-")``, the
0.9 momentum default, "gd takes no momentum", the default step sizes) asks the preset instead: the
config validation, `eos_probe.optim.make_optimizer`, the stability theory, the run reader and the plots.
Pure Python, no torch: the numpy-only theory imports it too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidValueError, did_you_mean

#: distributions of the two-point directions u (E[u uᵀ] = I); the first is the default
DIRECTIONS = ("gaussian", "sphere", "rademacher")
DEFAULT_DIRECTIONS = DIRECTIONS[0]
#: finite differences of the two-point estimator
DIFFERENCES = ("central", "forward")
#: momentum conventions: heavy_ball m ← βm + g; ema m ← βm + (1−β)g
MOMENTUM_STYLES = ("heavy_ball", "ema")
#: β of gdm and β1 of adam when none is given
DEFAULT_MOMENTUM = 0.9


@dataclass(frozen=True)
class Preset:
    """One optimizer preset: a gradient source × an update rule, with its defaults.

    Attributes:
        name: the preset's name (``--optimizer``).
        zeroth_order: whether the source estimates g from loss values only.
        source: ``"exact"`` (full-batch gradient), ``"two_point"`` (ZO estimator) or ``"cocd"``.
        rule: ``"gd"``, ``"momentum"`` (heavy ball / EMA) or ``"adam"``.
        lr: the default step size (``TrainConfig.lr = None``).
        momentum: the default β (β1 for Adam); 0 for rules without momentum.
        momentum_style: the default convention, None for rules without momentum (Adam admits only ``"ema"``).
        family: the first-order rule name the stability theory uses (``"gd"``, ``"gdm"``, ``"adam"``, or
            ``"cocd"``/``"bccd"``), i.e. the name without ``zo-``.
        fo_twin: the first-order preset with the same update rule (a ZO run's classical edge).
        norm_match: the two-point estimate is divided by √κ (E‖v‖² = ‖g‖², docs/theory.md §5a).
        base: the preset whose band this one reports at the effective step η/√κ (norm-matched presets),
            else None.
        grouped: per-parameter-group sources and rules (hybrid ZO/FO, docs/theory.md §5b); the groups
            come from `group_defaults` and the config's ``[groups.<name>]`` tables.
        group_defaults: the preset's own groups, as (name, settings) pairs (a config may override them).
    """

    name: str
    zeroth_order: bool
    source: str
    rule: str
    lr: float
    momentum: float
    momentum_style: str | None
    family: str
    fo_twin: str
    norm_match: bool = False
    base: str | None = None
    grouped: bool = False
    group_defaults: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    @property
    def takes_momentum(self) -> bool:
        """Whether ``momentum`` means something for this preset (β of gdm, β1 of adam); grouped presets
        take theirs per group."""
        return self.rule in ("momentum", "adam")

    @property
    def preconditioned(self) -> bool:
        """Adam presets: the stability theory reads the spectrum of P⁻¹H."""
        return self.rule == "adam"

    @property
    def has_band(self) -> bool:
        """Whether the spectral stability theory (docs/theory.md §2–3) covers this preset.

        Not CoCD (its edge needs H's eigenvectors, probe metric cocd_edge). Not RISE: its step
        v_b = U_b U_bᵀ g_b/(q√κ_b) shapes each block differently, so no single (T, c) band of §2 applies.
        Not the grouped (hybrid) presets: each group has its own rule and step; their block-diagonal bands
        are the probe metric hybrid_bands (docs/theory.md §5b). Norm-matched ZO presets have one: ZO at
        the effective step η/√κ (`Setting.from_config`).
        """
        return self.source in ("exact", "two_point") and not self.grouped

    def check_momentum(self, momentum) -> None:
        """Raise InvalidValueError if a non-zero ``momentum`` is given to a preset without momentum.

        Raises:
            InvalidValueError: e.g. "optimizer zo-gd takes no momentum (got 0.9); use zo-gdm".
        """
        if not self.takes_momentum and momentum not in (None, 0, 0.0):
            hint = f"; use {self.name}m" if f"{self.name}m" in PRESETS else ""
            raise InvalidValueError(f"optimizer {self.name} takes no momentum (got {momentum}){hint}")


def _preset(name: str, source: str, rule: str, lr: float) -> Preset:
    momentum = DEFAULT_MOMENTUM if rule != "gd" else 0.0
    style = {"gd": None, "momentum": "heavy_ball", "adam": "ema"}[rule]
    family = name.removeprefix("zo-")
    return Preset(name, source != "exact", source, rule, lr, momentum, style, family,
                  family if source != "cocd" else "gd")


#: every preset by name, in the order the CLI lists them. Default step sizes — first order: inside the
#: classical edge of the default CNN at initialisation (λ_max ≈ 3.4 on fashion4). Zeroth order: the
#: literature's scale (ZO-GDM η = 1e-4 at β = 0.9, docs/theory.md §6), i.e. T = 2q(1−β)/η = 2000 for both
#: ZO-GD and ZO-GDM. On an H100 check, ZO-GD at η = 0.05 and 0.01 diverged within 100 steps on the CNN, ViT
#: and MLP: Tr(H) is far larger than λ_max. CoCD: the reference setting of docs/theory.md §5d.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    _preset("gd", "exact", "gd", 0.05),
    _preset("gdm", "exact", "momentum", 0.005),
    _preset("adam", "exact", "adam", 1e-3),
    _preset("zo-gd", "two_point", "gd", 1e-3),
    _preset("zo-gdm", "two_point", "momentum", 1e-4),
    _preset("zo-adam", "two_point", "adam", 1e-4),
    _preset("cocd", "cocd", "gd", 0.01),
    _preset("bccd", "cocd", "gd", 0.01),
    # norm-matched ZO-GD: E‖ηv‖² = η²‖g‖², the FO step's size, so GD's default η (its band is ZO-GD's at the
    # effective step η/√κ, far inside ZO-GD's T = 2q/η for any d ≫ 1)
    Preset("zo-gd-nm", True, "two_point", "gd", 0.05, 0.0, None, "gd", "gd", norm_match=True, base="zo-gd"),
    # RISE: one exact gradient, blockwise norm-matched shaping, plain GD steps (docs/theory.md §5a)
    Preset("rise", False, "rise", "gd", 0.05, 0.0, None, "gd", "gd"),
    # ZO-FC (docs/theory.md §5b): ZO adapter (Rademacher q = 4, μ = 1e-3, clipped to 1, heavy ball 0.9),
    # exact head for the first half of each task
    Preset("zo-fc", True, "groups", "groups", 0.01, 0.0, None, "gd", "gd", grouped=True, group_defaults=(
        ("adapter", (("source", "two_point"), ("directions", "rademacher"), ("queries", 4), ("mu", 1e-3),
                     ("clip", 1.0), ("rule", "heavy_ball"), ("momentum", 0.9), ("lr", 0.01))),
        ("head", (("source", "exact"), ("rule", "gd"), ("lr", 0.01), ("until", 0.5))))),
    # groups only from the config's [groups.<name>] tables
    Preset("hybrid", False, "groups", "groups", 0.01, 0.0, None, "gd", "gd", grouped=True),
)}
NAMES = tuple(PRESETS)

#: keys of a ``[groups.<name>]`` table (a hybrid optimizer's group, docs/theory.md §5b)
GROUP_KEYS = ("source", "directions", "queries", "mu", "clip", "rule", "lr", "momentum", "until")
#: a group's gradient sources and update rules
GROUP_SOURCES = ("exact", "two_point")
GROUP_RULES = ("gd", "heavy_ball", "adam")


def preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``.

    Raises:
        InvalidValueError: for an unknown name (the message lists every preset).
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise InvalidValueError(f"unknown optimizer {name!r}; choose one of {', '.join(NAMES)}"
                                + did_you_mean(name, NAMES)) from None


def check_lr(lr) -> None:
    """Raise InvalidValueError unless ``lr`` is a positive finite number ("lr must be a positive ...")."""
    if lr is None or not math.isfinite(lr) or lr <= 0:
        raise InvalidValueError(f"lr must be a positive finite number, got {lr}")
