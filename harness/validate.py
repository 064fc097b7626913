"""Every field of a run config and of a grid spec: its type and range, checked in one place.

A bad value is a :class:`~harness.tasks.UserError` with one line that names the field, the
value and what is valid, e.g. ``invalid rank 0; valid: an integer from 1 to 4096``.

The rules are tables (:data:`CONFIG_RULES`, :data:`SPEC_RULES`): a new field is one line.
A field absent from a config is not checked (fields are being added); a field absent from
the table passes through unchanged.

Numbers: a float field also takes a numeric string, because YAML 1.1 (PyYAML) reads ``1e-3``
(no dot) as the string ``"1e-3"``; it comes back as a float.  Integer fields take integers only
(``2.5`` and ``true`` are refused, not rounded).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora import DROPOUT_MASKS, SVD_METHODS

from . import tasks as tasks_module
from .tasks import TASKS, UserError, get_task

MAX_RANK = 4096          # the model is unknown at config time; lora checks each layer's size at run time
MAX_SEED = 2**32 - 1     # numpy's seed range (np.random.seed)
OWN_OPTIONS = ("task", "method", "preset", "seed")   # set by their own options / spec keys, never by --set


@dataclass(frozen=True)
class Rule:
    """One field: ``kind`` is int, float, bool, choice, text (non-empty string), string or names
    (a list of non-empty strings).  ``lo``/``hi`` bound numbers (``open_lo``/``open_hi``: excluded);
    ``null``: None is valid; ``empty``: an empty names list is valid."""
    kind: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple = ()
    null: bool = False
    empty: bool = False
    example: str = '["query", "value"]'

    def describe(self) -> str:
        if self.kind == "int":
            d = f"an integer from {self.lo} to {self.hi}" if self.hi is not None else f"an integer ≥ {self.lo}"
        elif self.kind == "float":
            if self.lo is not None and self.hi is not None:
                d = f"a number in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"
            else:
                d = f"a finite number {'>' if self.open_lo else '≥'} {self.lo:g}"
        elif self.kind == "bool":
            d = "true or false"
        elif self.kind == "choice":
            d = ", ".join(map(str, self.choices))
        elif self.kind == "names":
            d = f"a {'' if self.empty else 'non-empty '}list of non-empty strings, e.g. {self.example}"
        elif self.kind == "text":
            d = "a non-empty string"
        else:
            d = "a string"
        return f"{d}, or null" if self.null else d

    def check(self, value) -> tuple[bool, Any]:
        """(ok, the value normalised: floats as float)."""
        if value is None:
            return self.null, None
        k = self.kind
        if k == "int":
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            return (ok and self._in_range(int(value))), (int(value) if ok else value)
        if k == "float":
            x = _as_float(value)
            return (x is not None and self._in_range(x)), x
        if k == "bool":
            return isinstance(value, bool), value
        if k == "choice":
            return (isinstance(value, str) and value in self.choices), value
        if k == "names":
            ok = (isinstance(value, list) and (self.empty or len(value) > 0)
                  and all(isinstance(v, str) and v.strip() for v in value))
            return ok, value
        if k == "text":
            return isinstance(value, str) and bool(value.strip()), value
        return isinstance(value, str), value

    def _in_range(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.open_lo else x < self.lo):
            return False
        return self.hi is None or (x < self.hi if self.open_hi else x <= self.hi)


def _as_float(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def Int(lo, hi=None, null=False):
    return Rule("int", lo, hi, null=null)


def Num(lo, hi=None, open_lo=False, open_hi=False, null=False):
    return Rule("float", lo, hi, open_lo, open_hi, null=null)


def Choice(*choices, null=False):
    return Rule("choice", choices=tuple(choices), null=null)


BOOL, TEXT, STRING = Rule("bool"), Rule("text"), Rule("string")

# Run config fields (harness.config.DEFAULTS and the fields being added).
CONFIG_RULES: dict[str, Rule] = {
    "seed": Int(0, MAX_SEED),
    "model": TEXT,
    "rank": Int(1, MAX_RANK),
    "alpha": Num(0, open_lo=True),
    "dropout": Num(0, 1, open_hi=True),
    "targets": Rule("names"),
    "head": Rule("names", empty=True, example='["classifier"]'),
    "lr": Num(0, 1, open_lo=True),
    "epochs": Int(1),
    "batch_size": Int(1),
    "max_length": Int(8),
    "warmup_ratio": Num(0, 1, open_hi=True),
    "weight_decay": Num(0),
    "evals_per_epoch": Int(1),
    "max_train_examples": Int(1, null=True),
    "group_by_length": BOOL,
    "svd_method": Choice(*SVD_METHODS),
    "niter": Int(0),
    "precision": Choice("fp32", "bf16"),
    "val_fraction": Num(0, 0.5, open_lo=True, null=True),
    "capture_batches": Int(0),
    "init_batches": Int(1, null=True),   # None except for the data-aware inits (lora.DATA_INITS)
    "rslora": BOOL,
    "dropout_mask": Choice(*DROPOUT_MASKS),
}
# Fields that do not apply to full fine-tuning: for method "full" validation accepts None for them.  make_config
# sets rank ... init_batches to None there; rslora and dropout_mask keep their legacy values (False, "torch") so
# that full fine-tuning's hash is the round-1 one.
ADAPTER_ONLY = frozenset({"rank", "alpha", "dropout", "targets", "svd_method", "niter", "rslora", "init_batches",
                          "dropout_mask"})

# Grid spec keys (harness.grid); "overrides", "vary" and "blocks" are checked by validate_spec itself.
EXECUTORS = ("notebook", "process")     # how the grid runs a config (harness.grid.run_grid)
SPEC_RULES: dict[str, Rule] = {
    "name": TEXT,
    "description": STRING,
    "preset": TEXT,                 # checked against the presets below
    "out_dir": TEXT,
    "workers": Int(1),
    "save_factors": BOOL,
    "compact_factors": BOOL,
    "lr_from": TEXT,
    "extend_lr_edges": Int(0),
    "executor": Choice(*EXECUTORS),
}
SPEC_LISTS = ("tasks", "methods", "seeds")
SPEC_KEYS = frozenset({*SPEC_RULES, *SPEC_LISTS, "overrides", "vary", "blocks"})
GRID_WIDE = frozenset({"name", "out_dir", "workers", "executor", "blocks"})   # not inside a block


def show(value, limit: int = 60) -> str:
    """A value as it appears in a message: its repr, on one line, cut to ``limit`` characters."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def bad_value(field: str, value, rule: Rule) -> UserError:
    if rule.kind == "choice" and isinstance(value, str):
        return UserError(f"unknown {field} {show(value)}; valid: {rule.describe()}")
    return UserError(f"invalid {field} {show(value)}; valid: {rule.describe()}")


def check_field(field: str, value, rule: Rule, where: str = ""):
    """``value`` normalised, or a UserError naming ``where`` (a prefix such as ``"spec.yaml: "``)."""
    ok, norm = rule.check(value)
    if not ok:
        e = bad_value(field, value, rule)
        raise UserError(f"{where}{e}")
    return norm


def validate_identity(task, method, preset) -> None:
    """task, method and preset are strings (their names are checked by make_config)."""
    from .config import METHODS, PRESETS
    tasks = [*TASKS, *getattr(tasks_module, "BI_TASKS", {})]
    for field, value, valid in (("task", task, tasks), ("method", method, METHODS), ("preset", preset, PRESETS)):
        if not isinstance(value, str):
            raise UserError(f"invalid {field} {show(value)}; valid: {', '.join(valid)}")


def validate_config(cfg: dict) -> dict:
    """The config with every field checked against :data:`CONFIG_RULES` (floats as float)."""
    out = dict(cfg)
    full = cfg.get("method") == "full"
    for field, rule in CONFIG_RULES.items():
        if field not in cfg:
            continue
        if full and field in ADAPTER_ONLY and cfg[field] is None:
            continue
        out[field] = check_field(field, cfg[field], rule)
    return out


def _config_fields() -> tuple[str, ...]:
    from .config import DEFAULTS
    return tuple(DEFAULTS)


def _check_config_map(key: str, value, where: str, fields: tuple[str, ...], lists: bool) -> None:
    """``overrides`` (field → value) or ``vary`` (field → non-empty list of values)."""
    kind = "a mapping of config field → list of values" if lists else "a mapping of config field → value"
    if not isinstance(value, dict):
        raise UserError(f"{where}{key} must be {kind}, e.g. {key}: {{lr: {'[0.001, 0.003]' if lists else '0.001'}}}; "
                        f"got {show(value)}")
    for field, v in value.items():
        if field in OWN_OPTIONS:
            raise UserError(f"{where}{key} sets {field!r}, which has its own spec key; "
                            f"use {'preset' if field == 'preset' else field + 's'}: instead")
        if field not in fields:
            raise UserError(f"{where}{key}: unknown config field {show(field)}; valid: {', '.join(fields)}")
        values = v if lists else [v]
        if lists and (not isinstance(v, list) or not v):
            raise UserError(f"{where}{key}.{field} must be a non-empty list of values, e.g. [{show(v)}]; "
                            f"got {show(v)}")
        for x in values:
            if x is not None and field in CONFIG_RULES:
                check_field(field, x, CONFIG_RULES[field], where)


def _check_list(key: str, value, where: str) -> None:
    if key == "seeds":
        item, valid, example = Int(0, MAX_SEED), f"integers from 0 to {MAX_SEED}", "[0, 1, 2]"
    else:
        from .config import METHODS
        item = Choice(*(TASKS if key == "tasks" else METHODS))
        short = isinstance(value, str) and value.isprintable() and len(value) < 40
        valid, example = f"{key[:-1]} names", f"[{value if short else item.choices[0]}]"
    if not isinstance(value, list) or not value:
        got = f"the string {value!r}" if isinstance(value, str) else show(value)
        raise UserError(f"{where}{key} must be a non-empty list of {valid}, e.g. {key}: {example}; got {got}")
    for x in value:
        if key == "tasks" and isinstance(x, str):
            try:
                get_task(x)
            except UserError as e:
                raise UserError(f"{where}tasks: {e}") from None
        else:
            check_field(key[:-1], x, item, f"{where}{key}: ")


def _check_mapping(spec: dict, where: str, in_block: bool) -> None:
    unknown = sorted(set(map(str, spec)) - SPEC_KEYS)
    if unknown:
        raise UserError(f"{where}unknown grid key(s) {', '.join(unknown)}; valid: {', '.join(sorted(SPEC_KEYS))}")
    if in_block:
        bad = sorted(set(spec) & GRID_WIDE)
        if bad:
            raise UserError(f"{where}{', '.join(bad)} cannot be set inside a block (grid-wide keys)")
    fields = _config_fields()
    for key, value in spec.items():
        if key in SPEC_RULES:
            check_field(key, value, SPEC_RULES[key], where)
        elif key in SPEC_LISTS:
            _check_list(key, value, where)
        elif key in ("overrides", "vary"):
            if value is not None:
                _check_config_map(key, value, where, fields, lists=key == "vary")
    if "preset" in spec:
        from .config import PRESETS
        check_field("preset", spec["preset"], Choice(*PRESETS), where)


def validate_spec(spec, path: str | Path = "<spec>") -> dict:
    """A grid spec (the parsed YAML of ``path``) checked: a mapping of known keys, each of the right
    type; tasks/methods/seeds non-empty lists; overrides/vary values checked like config fields;
    blocks a non-empty list of mappings checked the same way.  Returns the spec."""
    where = f"{path}: "
    if spec is None:
        raise UserError(f"{where}empty grid spec; expected a mapping such as "
                        f"{{tasks: [mrpc], methods: [random], seeds: [0]}}")
    if not isinstance(spec, dict):
        raise UserError(f"{where}a grid spec must be a mapping of keys ({', '.join(sorted(SPEC_KEYS))}); "
                        f"got a {type(spec).__name__}: {show(spec)}")
    _check_mapping(spec, where, in_block=False)
    if "blocks" in spec:
        blocks = spec["blocks"]
        if not isinstance(blocks, list) or not blocks:
            raise UserError(f"{where}blocks must be a non-empty list of mappings, e.g. blocks: [{{seeds: [0]}}]; "
                            f"got {show(blocks)}")
        for i, block in enumerate(blocks):
            if not isinstance(block, dict):
                raise UserError(f"{where}blocks[{i}] must be a mapping, e.g. {{seeds: [0]}}; got {show(block)}")
            _check_mapping(block, f"{where}blocks[{i}]: ", in_block=True)
    return spec
