"""What an optimizer is: the registry of its settings, gradient sources, update rules and presets.

Three tables, each the one place that states what it holds:

- `OPTIONS`: every setting a gradient source or update rule takes (a `TrainConfig` field, TOML key and
  ``--flag``), its default, its domain and its help text. Constructors, the config, the CLI help, the theory's
  checks and the docs read defaults and domains from here.
- `SOURCES` and `RULES`: each gradient source and update rule under the name presets carry, the options it
  takes, whether the spectral stability theory covers it, and the class that implements it (a "module:Class"
  path, imported by `eos_probe.optim.make_optimizer`, so this module stays torch-free).
- `PRESETS`: each optimizer name (``--optimizer``) as a source × a rule, its default step size and the options
  it fixes or defaults differently.

Pure Python, no torch: the numpy-only theory and the CLI's help read it too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

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
class Option:
    """One setting of a gradient source or update rule.

    Attributes:
        name: the `TrainConfig` field and TOML key; the CLI flag is ``--name-with-dashes``.
        default: its value when none is given (None: the preset's, or the source's own rule, see `help`).
        domain: what values it takes: ``fraction`` [0, 1), ``unit`` [0, 1], ``positive``, ``nonnegative``,
            ``count`` (integer ≥ 1), ``choice`` (one of `choices`), ``flag`` (bool), ``blocks`` ("tensor" or a
            count), ``tables`` (a dict of tables).
        label: how error messages name it.
        help: the CLI help text (the default is appended where there is one).
        choices: the values of a ``choice`` option.
        exclusive: giving it to an optimizer that does not take it is an error (others are ignored there).
    """

    name: str
    default: Any
    domain: str
    label: str
    help: str
    choices: tuple[str, ...] = ()
    exclusive: bool = False

    def check(self, value: Any, where: str = "") -> Any:
        """`value` if it lies in the domain (None passes where the default is None).

        Raises:
            InvalidValueError: a one-line message naming the option (prefixed by `where`).
        """
        if value is None and self.default is None:
            return value
        what = f"{where}{self.label}"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.domain == "choice":
            if value not in self.choices:
                raise InvalidValueError(f"unknown {what} {value!r}; choose one of {', '.join(self.choices)}"
                                        + did_you_mean(value, self.choices))
        elif self.domain in ("count", "blocks"):
            if self.domain == "blocks" and value == "tensor":
                return value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                tail = "'tensor' or a positive integer" if self.domain == "blocks" else "a positive integer"
                raise InvalidValueError(f"{what} must be {tail}, got {value!r}")
        elif self.domain in ("fraction", "unit"):
            top = ")" if self.domain == "fraction" else "]"
            if not number or not (0.0 <= value < 1.0 or (self.domain == "unit" and value == 1.0)):
                raise InvalidValueError(f"{what} must lie in [0, 1{top}, got {value!r}")
        elif self.domain in ("positive", "nonnegative"):
            if not number or not math.isfinite(value) or value < 0 or (self.domain == "positive" and value == 0):
                kind = "positive" if self.domain == "positive" else "non-negative"
                raise InvalidValueError(f"{what} must be a {kind} finite number, got {value!r}")
        elif self.domain == "flag" and not isinstance(value, bool):
            raise InvalidValueError(f"{what} must be true or false, got {value!r}")
        elif self.domain == "tables" and not isinstance(value, dict):
            raise InvalidValueError(f"{what} must be [groups.<name>] tables, got {value!r}")
        return value


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("momentum", None, "fraction", "momentum", f"β of gdm, β1 of adam (default {DEFAULT_MOMENTUM:g})",
           exclusive=True),
    Option("momentum_style", "heavy_ball", "choice", "momentum style", "gdm convention", MOMENTUM_STYLES),
    Option("beta2", 0.999, "fraction", "beta2", "Adam β2"),
    Option("eps", 1e-8, "positive", "eps", "Adam ε"),
    Option("queries", 1, "count", "queries", "ZO queries per step q (rise: per block)"),
    Option("mu", 1e-3, "positive", "mu (smoothing radius)", "ZO smoothing radius μ"),
    Option("directions", DEFAULT_DIRECTIONS, "choice", "directions", "ZO direction law", DIRECTIONS),
    Option("difference", DIFFERENCES[0], "choice", "finite difference", "ZO finite difference", DIFFERENCES),
    Option("norm_match", False, "flag", "norm_match",
           "divide the two-point estimate by sqrt(kappa) so E|v|^2 = |g|^2 (kappa = (q+d+1)/q gaussian, "
           "(q+d-1)/q sphere and rademacher)", exclusive=True),
    Option("rise_blocks", "tensor", "blocks", "rise blocks",
           "'tensor' (one block per parameter tensor) or a chunk length N", exclusive=True),
    Option("cocd_block", None, "count", "CoCD block size B",
           "coordinates B refreshed per step (default ceil(1% of d))", exclusive=True),
    Option("cocd_gamma", 0.99, "unit", "CoCD decay gamma", "decay gamma of stale estimates", exclusive=True),
    Option("cocd_eps", 0.1, "positive", "CoCD finite-difference radius eps", "central-difference radius epsilon",
           exclusive=True),
    Option("cocd_memory", None, "count", "CoCD memory budget m",
           "keep only the m most recent estimates, B <= m < d (default: all)", exclusive=True),
    Option("weight_decay", 0.0, "nonnegative", "weight decay", "step on G + wd*theta", exclusive=True),
    Option("groups", None, "tables", "groups", "[groups.<name>] tables (config file only)", exclusive=True),
)}


@dataclass(frozen=True)
class Component:
    """A gradient source or an update rule as presets name it.

    Attributes: `name`, `title` (for messages: "the {title} optimizers"), `options` (the `OPTIONS` it takes),
    `impl` ("module:Class" of the implementation, relative to `eos_probe.optim`; the class builds itself with
    ``from_settings``), `band` (the spectral stability theory of docs/theory.md §2–3 covers it).
    """

    name: str
    title: str
    options: tuple[str, ...]
    impl: str
    band: bool = False


SOURCES: dict[str, Component] = {c.name: c for c in (
    Component("exact", "first-order", (), "sources:ExactSource", band=True),
    Component("two_point", "two-point ZO", ("queries", "mu", "directions", "difference", "norm_match"),
              "sources:TwoPointSource", band=True),
    Component("cocd", "coordinate-descent", ("cocd_block", "cocd_gamma", "cocd_eps", "cocd_memory",
                                             "weight_decay"), "cocd:CoCDSource"),
    Component("rise", "RISE", ("queries", "rise_blocks"), "sources:RiseSource"),
    Component("groups", "grouped", ("groups",), "hybrid:GroupSource"),
)}
RULES: dict[str, Component] = {c.name: c for c in (
    Component("gd", "plain-step", (), "rules:GD", band=True),
    Component("momentum", "momentum", ("momentum", "momentum_style"), "rules:HeavyBall", band=True),
    Component("adam", "Adam", ("momentum", "beta2", "eps"), "rules:Adam", band=True),
    Component("groups", "grouped", (), "hybrid:GroupRule"),
)}


@dataclass(frozen=True)
class Preset:
    """One optimizer preset: a gradient source × an update rule, with its defaults.

    Attributes:
        name: the preset's name (``--optimizer``).
        source, rule: names in `SOURCES` and `RULES`.
        lr: the default step size (``TrainConfig.lr = None``).
        momentum: the default β (β1 for Adam); 0 for rules without momentum.
        momentum_style: the convention, None for rules without momentum (Adam admits only ``"ema"``).
        family: the name the stability theory uses (``"gd"``, ``"gdm"``, ``"adam"``, or ``"cocd"``/``"bccd"``).
        fo_twin: the first-order preset with the same update rule (a ZO run's classical edge).
        fixed: options this preset sets and a user may not change (bccd: CoCD with γ = 0).
        defaults: options whose default differs for this preset.
        base: the preset whose band this one reports at the effective step η/√κ (norm-matched), else None.
        group_defaults: a grouped preset's own groups, as (name, settings) pairs (a config may override them).
        description: one line for the CLI help and the docs.
    """

    name: str
    source: str
    rule: str
    lr: float
    momentum: float
    momentum_style: str | None
    family: str
    fo_twin: str
    fixed: tuple[tuple[str, Any], ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()
    base: str | None = None
    group_defaults: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    description: str = ""

    @property
    def zeroth_order(self) -> bool:
        """The direction comes from loss values only (two-point, CoCD, or a grouped preset with a ZO group)."""
        if self.grouped:
            return any(dict(g).get("source") == "two_point" for _, g in self.group_defaults)
        return self.source not in ("exact", "rise")

    @property
    def grouped(self) -> bool:
        """Per-parameter-group sources and rules (hybrid ZO/FO, docs/theory.md §5b)."""
        return self.source == "groups"

    @property
    def norm_match(self) -> bool:
        """The two-point estimate is divided by √κ (E‖v‖² = ‖g‖², docs/theory.md §5a)."""
        return dict(self.fixed).get("norm_match", False)

    @property
    def options(self) -> tuple[str, ...]:
        """The `OPTIONS` this preset's source and rule take."""
        return SOURCES[self.source].options + tuple(o for o in RULES[self.rule].options
                                                    if o not in SOURCES[self.source].options)

    @property
    def takes_momentum(self) -> bool:
        """Whether ``momentum`` means something for this preset (β of gdm, β1 of adam)."""
        return "momentum" in self.options

    @property
    def preconditioned(self) -> bool:
        """Adam presets: the stability theory reads the spectrum of P⁻¹H."""
        return self.rule == "adam"

    @property
    def has_band(self) -> bool:
        """Whether the spectral stability theory (docs/theory.md §2–3) covers this preset: its source and rule
        are covered. Not CoCD (its edge needs H's eigenvectors: probe metric cocd_edge), not RISE (each block is
        shaped differently), not the grouped presets (per-group bands: probe metric hybrid_bands). Norm-matched
        ZO presets have one: ZO at the effective step η/√κ (`Setting.from_config`)."""
        return SOURCES[self.source].band and RULES[self.rule].band

    def default(self, option: str) -> Any:
        """The value `option` takes in this preset when none is given."""
        fixed, own = dict(self.fixed), dict(self.defaults)
        if option in fixed:
            return fixed[option]
        if option == "momentum":
            return self.momentum
        return own.get(option, OPTIONS[option].default)

    def check_momentum(self, momentum: Any) -> None:
        """Raise InvalidValueError if a non-zero ``momentum`` is given to a preset without momentum.

        Raises:
            InvalidValueError: e.g. "optimizer zo-gd takes no momentum (got 0.9); use zo-gdm".
        """
        if not self.takes_momentum and momentum not in (None, 0, 0.0):
            hint = f"; use {self.name}m" if f"{self.name}m" in PRESETS else ""
            raise InvalidValueError(f"optimizer {self.name} takes no momentum (got {momentum}){hint}")

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option this preset takes, filled: fixed values, then `given` (None = not given), then defaults.

        Args:
            given: option values by name (a config's fields or `make_optimizer`'s keywords); unknown names
                are refused, known ones this preset does not take are refused if `Option.exclusive` and given.

        Raises:
            InvalidValueError: an unknown option, a value outside its domain, an exclusive option given to a
                preset that does not take it, a fixed option changed, momentum given to a preset without it.
        """
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            raise InvalidValueError(f"unknown optimizer option {unknown[0]!r}; valid options: {', '.join(OPTIONS)}"
                                    + did_you_mean(unknown[0], OPTIONS))
        for k, v in given.items():  # every given value lies in its domain, taken by this preset or not
            if v is not None:
                OPTIONS[k].check(v)
        self.check_momentum(given.get("momentum"))
        stray = [k for k, v in given.items() if OPTIONS[k].exclusive and k not in self.options
                 and _given(OPTIONS[k], v) and k != "momentum"]
        if stray:
            takers = [n for n, p in PRESETS.items() if all(k in p.options for k in stray)]
            title = next(c.title for c in (*SOURCES.values(), *RULES.values()) if stray[0] in c.options)
            verb = "applies" if len(stray) == 1 else "apply"
            raise InvalidValueError(f"{', '.join(stray)} {verb} to the {title} optimizers only "
                                    f"({', '.join(takers)}), not {self.name}")
        out = {}
        for name in self.options:
            opt, value, fixed = OPTIONS[name], given.get(name), dict(self.fixed)
            if name in fixed and _given(opt, value) and value != fixed[name]:
                others = [n for n, p in PRESETS.items() if p.source == self.source and p.rule == self.rule
                          and name not in dict(p.fixed)]
                raise InvalidValueError(f"optimizer {self.name} fixes {name} = {fixed[name]:g} (got {value:g})"
                                        + (f"; use {others[0]} for other values" if others else ""))
            out[name] = opt.check(self.default(name) if value is None or name in fixed else value)
        return out


def _given(opt: Option, value: Any) -> bool:
    """Whether a config value was set by the user (it differs from the unset default)."""
    return value is not None and value != opt.default and not (opt.domain == "tables" and value == {})


def _preset(name: str, source: str, rule: str, lr: float, description: str, *, family: str | None = None,
            fo_twin: str | None = None, **kw: Any) -> Preset:
    """A preset whose momentum default, convention, family and first-order twin follow from its rule and name."""
    momentum = DEFAULT_MOMENTUM if "momentum" in RULES[rule].options else 0.0
    style = {"momentum": "heavy_ball", "adam": "ema"}.get(rule)
    family = family or name.removeprefix("zo-")
    # a preset the band theory does not cover is drawn against the classical GD line
    fo_twin = fo_twin or (family if SOURCES[source].band and RULES[rule].band else "gd")
    return Preset(name, source, rule, lr, momentum, style, family, fo_twin, description=description, **kw)


#: every preset by name, in the order the CLI lists them. Default step sizes — first order: inside the
#: classical edge of the default CNN at initialisation (λ_max ≈ 3.4 on fashion4). Zeroth order: the
#: literature's scale (ZO-GDM η = 1e-4 at β = 0.9, docs/theory.md §6), i.e. T = 2q(1−β)/η = 2000 for both
#: ZO-GD and ZO-GDM. On an H100 check, ZO-GD at η = 0.05 and 0.01 diverged within 100 steps on the CNN, ViT
#: and MLP: Tr(H) is far larger than λ_max. CoCD: the reference setting of docs/theory.md §5d.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    _preset("gd", "exact", "gd", 0.05, "gradient descent"),
    _preset("gdm", "exact", "momentum", 0.005, "gradient descent with momentum"),
    _preset("adam", "exact", "adam", 1e-3, "Adam"),
    _preset("zo-gd", "two_point", "gd", 1e-3, "two-point ZO gradient descent"),
    _preset("zo-gdm", "two_point", "momentum", 1e-4, "two-point ZO with momentum"),
    _preset("zo-adam", "two_point", "adam", 1e-4, "ZO-Adam: Adam on the two-point estimate"),
    _preset("cocd", "cocd", "gd", 0.01, "coherent coordinate descent (docs/theory.md §5d)"),
    _preset("bccd", "cocd", "gd", 0.01, "block cyclic coordinate descent: CoCD with gamma = 0",
            fixed=(("cocd_gamma", 0.0),)),
    # norm-matched ZO-GD: E‖ηv‖² = η²‖g‖², the FO step's size, so GD's default η (its band is ZO-GD's at the
    # effective step η/√κ, far inside ZO-GD's T = 2q/η for any d ≫ 1)
    _preset("zo-gd-nm", "two_point", "gd", 0.05, "norm-matched ZO-GD", fixed=(("norm_match", True),),
            base="zo-gd", family="gd"),
    # RISE: one exact gradient, blockwise norm-matched shaping, plain GD steps (docs/theory.md §5a)
    _preset("rise", "rise", "gd", 0.05, "RISE: blockwise randomized shaping of the exact gradient",
            family="gd"),
    # ZO-FC (docs/theory.md §5b): ZO adapter (Rademacher q = 4, μ = 1e-3, clipped to 1, heavy ball 0.9),
    # exact head for the first half of each task
    _preset("zo-fc", "groups", "groups", 0.01, "ZO adapter, exact head (takes [groups.<name>] tables)",
            family="gd", group_defaults=(
                ("adapter", (("source", "two_point"), ("directions", "rademacher"), ("queries", 4), ("mu", 1e-3),
                             ("clip", 1.0), ("rule", "heavy_ball"), ("momentum", 0.9), ("lr", 0.01))),
                ("head", (("source", "exact"), ("rule", "gd"), ("lr", 0.01), ("until", 0.5))))),
    # groups only from the config's [groups.<name>] tables
    _preset("hybrid", "groups", "groups", 0.01, "per-group sources and rules from [groups.<name>] tables",
            family="gd"),
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


def check_lr(lr: Any) -> None:
    """Raise InvalidValueError unless ``lr`` is a positive finite number ("lr must be a positive ...")."""
    if lr is None or not math.isfinite(lr) or lr <= 0:
        raise InvalidValueError(f"lr must be a positive finite number, got {lr}")


def default(option: str) -> Any:
    """The default of an `OPTIONS` entry (what constructors and the config fields default to)."""
    return OPTIONS[option].default
