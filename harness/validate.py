"""Every field of a run config and of a grid spec: its type and range, checked in one place.

A bad value is a :class:`~harness.tasks.UserError` with one line that names the field, the
value and what is valid, e.g. ``invalid rank 0; valid: an integer from 1 to 4096``.

The rules are tables (:data:`CONFIG_RULES`, :data:`SPEC_RULES`): a new field is one line.
A field absent from a config is not checked (fields are being added); a field absent from
the table passes through unchanged.

Numbers: a float field also takes a numeric string, because YAML 1.1 (PyYAML) reads ``1e-3``
(no dot) as the string ``"1e-3"``; it comes back as a float.  Integer fields take integers only
(``2.5`` and ``true`` are refused, not rounded).  Strings have a length limit (:data:`MAX_TEXT`).

A grid spec file is read by :func:`load_spec` with limits that refuse it before any work: its size
(:data:`MAX_SPEC_BYTES`), YAML without aliases or duplicate keys and with at most :data:`MAX_SPEC_NODES`
nodes, and the number of configs it expands to (:data:`MAX_CONFIGS`, counted from its list lengths).
This module does not import torch (lora is imported on first use of its choices), so those refusals
take a fraction of a second.
"""
from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import tasks as tasks_module
from .presets import DEFAULTS, METHODS, PRESETS
from .tasks import TASKS, UserError, get_task

MAX_RANK = 4096          # the model is unknown at config time; lora checks each layer's size at run time
MAX_SEED = 2**32 - 1     # numpy's seed range (np.random.seed)
MAX_TEXT = 1000          # characters in a string field (a model id, a path, a name)
MAX_DESCRIPTION = 10_000
MAX_NAMES = 100          # entries of a list-of-names field (targets, head)
MAX_SPEC_BYTES = 64 * 1024      # the committed specs are under 2 KB
MAX_SPEC_NODES = 10_000         # YAML nodes (scalars, lists, mappings) in a spec
MAX_SPEC_DEPTH = 20             # lists and mappings nested in each other
MAX_CONFIGS = 5_000             # configs a grid may expand to without --allow-large
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
    lora_choices: str = ""      # choices are this lora constant (read on first use: lora imports torch)
    max_len: int = MAX_TEXT     # characters, for strings

    @property
    def options(self) -> tuple:
        if self.lora_choices:
            import lora
            return tuple(getattr(lora, self.lora_choices))
        return self.choices

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
            d = ", ".join(map(str, self.options))
        elif self.kind == "names":
            d = (f"a {'' if self.empty else 'non-empty '}list of at most {MAX_NAMES} non-empty strings of at most "
                 f"{self.max_len} characters, e.g. {self.example}")
        elif self.kind == "text":
            d = f"a non-empty string of at most {self.max_len} characters"
        else:
            d = f"a string of at most {self.max_len} characters"
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
            return (isinstance(value, str) and value in self.options), value
        if k == "names":
            ok = (isinstance(value, list) and (self.empty or len(value) > 0) and len(value) <= MAX_NAMES
                  and all(isinstance(v, str) and v.strip() and len(v) <= self.max_len for v in value))
            return ok, value
        ok = isinstance(value, str) and len(value) <= self.max_len
        if k == "text":
            return ok and bool(value.strip()), value
        return ok, value

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


def LoraChoice(name: str):
    """One of the names in lora's constant ``name`` (e.g. ``SVD_METHODS``)."""
    return Rule("choice", lora_choices=name)


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
    "svd_method": LoraChoice("SVD_METHODS"),
    "niter": Int(0),
    "precision": Choice("fp32", "bf16"),
    "val_fraction": Num(0, 0.5, open_lo=True, null=True),
    "init_batches": Int(1, null=True),   # None except for the data-aware inits (lora.DATA_INITS)
    "rslora": BOOL,
    "dropout_mask": LoraChoice("DROPOUT_MASKS"),
    "init_pull": Num(0),
}
# Fields that do not apply to full fine-tuning: for method "full" validation accepts None for them.  make_config
# sets rank ... init_batches to None there; rslora and dropout_mask keep their legacy values (False, "torch") so
# that full fine-tuning's hash is the round-1 one.
ADAPTER_ONLY = frozenset({"rank", "alpha", "dropout", "targets", "svd_method", "niter", "rslora", "init_batches",
                          "dropout_mask"})

# Grid spec keys (harness.grid); "overrides", "vary" and "blocks" are checked by validate_spec itself.
EXECUTORS = ("notebook", "process", "ray")     # how the grid runs a config (harness.grid.run_grid)
SPEC_RULES: dict[str, Rule] = {
    "name": TEXT,
    "description": Rule("string", max_len=MAX_DESCRIPTION),
    "preset": TEXT,                 # checked against the presets below
    "out_dir": TEXT,
    "workers": Int(1),
    "save_factors": BOOL,
    "compact_factors": BOOL,
    "lr_from": TEXT,
    "extend_lr_edges": Int(0),
    "executor": Choice(*EXECUTORS),
    "gpus_per_run": Num(0, 64),     # ray: GPUs each run asks for (a fraction packs runs onto one card)
}
SPEC_LISTS = ("tasks", "methods", "seeds")
SPEC_KEYS = frozenset({*SPEC_RULES, *SPEC_LISTS, "overrides", "vary", "blocks"})
GRID_WIDE = frozenset({"name", "out_dir", "workers", "executor", "gpus_per_run", "blocks"})   # not inside a block


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 3, 80, 40, 80
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxarray = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 6


def show(value, limit: int = 60) -> str:
    """A value as it appears in a message: its repr, on one line, cut to ``limit`` characters.  The repr
    is built with reprlib's size limits, so a huge value (a long string, a nested list) costs no more
    than a small one."""
    r = " ".join(_SHORT.repr(value).splitlines())
    return r if len(r) <= limit else r[:limit - 3] + "..."


def clip(text: str, limit: int = 200) -> str:
    """A text (an exception's message, a path) on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).splitlines())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    return tuple(DEFAULTS)


def _check_config_map(key: str, value, where: str, fields: tuple[str, ...], lists: bool) -> None:
    """``overrides`` (field → value) or ``vary`` (field → non-empty list of values)."""
    kind = "a mapping of config field → list of values" if lists else "a mapping of config field → value"
    if not isinstance(value, dict):
        raise UserError(f"{where}{key} must be {kind}, e.g. {key}: {{lr: {'[0.001, 0.003]' if lists else '0.001'}}}; "
                        f"got {show(value)}")
    for field, v in value.items():
        if field in OWN_OPTIONS:
            raise UserError(f"{where}{key} sets {show(field)}, which has its own spec key; "
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
        item = Choice(*(TASKS if key == "tasks" else METHODS))
        short = isinstance(value, str) and value.isprintable() and len(value) < 40
        valid, example = f"{key[:-1]} names", f"[{value if short else item.choices[0]}]"
    if not isinstance(value, list) or not value:
        got = f"the string {show(value)}" if isinstance(value, str) else show(value)
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


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the limits of a grid spec: no aliases (a few hundred bytes of nested
    aliases expand to gigabytes), no duplicate keys (PyYAML keeps the last one silently), at most
    :data:`MAX_SPEC_NODES` nodes nested at most :data:`MAX_SPEC_DEPTH` deep.  Each limit raises
    :class:`_TooMuch` while the document is composed, before anything is built from it."""

    def __init__(self, stream):
        super().__init__(stream)
        self.nodes, self.depth = 0, 0

    def compose_node(self, parent, index):
        line = self.peek_event().start_mark.line + 1
        if self.check_event(yaml.AliasEvent):
            raise _TooMuch(f"line {line}: YAML aliases (*{self.peek_event().anchor}) are not allowed in a grid "
                           f"spec; write the values out")
        self.nodes += 1
        if self.nodes > MAX_SPEC_NODES:
            raise _TooMuch(f"line {line}: more than {MAX_SPEC_NODES:,} YAML values; a grid spec is a few lists")
        self.depth += 1
        try:
            if self.depth > MAX_SPEC_DEPTH:
                raise _TooMuch(f"line {line}: lists or mappings nested more than {MAX_SPEC_DEPTH} deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise _TooMuch(f"line {key_node.start_mark.line + 1}: duplicate key {show(key)} "
                                   f"(each key once per mapping)")
                seen.add(key)
        return super().construct_mapping(node, deep)


class _TooMuch(Exception):
    """A grid spec beyond a limit of :class:`_SpecLoader`."""


def read_spec(path: str | Path):
    """The parsed YAML of the grid spec file ``path``, or a UserError naming the file: missing, not a
    regular file, unreadable, larger than :data:`MAX_SPEC_BYTES`, not UTF-8, not YAML, or beyond a limit
    of :class:`_SpecLoader`."""
    p = Path(path)
    try:
        p.stat()
    except (OSError, ValueError):       # missing, a name too long, a NUL byte in a spec's lr_from
        raise UserError(f"grid spec {clip(str(p))!r} not found; specs live in configs/ (e.g. configs/quick.yaml)") from None
    if not p.is_file():
        raise UserError(f"grid spec {clip(str(p))!r} is not a file; give a YAML file such as configs/quick.yaml")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise UserError(f"grid spec {clip(str(p))!r}: cannot read it ({e.strerror or type(e).__name__})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise UserError(f"{p}: larger than {MAX_SPEC_BYTES // 1024} KiB; a grid spec is a few lists "
                        f"(configs/quick.yaml is under 1 KiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        f"expected a YAML grid spec") from None
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except _TooMuch as e:
        raise UserError(f"{p} {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({clip(str(e).splitlines()[0])})") from None
    except (ValueError, TypeError, OverflowError) as e:     # a scalar PyYAML cannot build, e.g. date 2024-13-45
        raise UserError(f"{p}: not valid YAML ({clip(str(e))})") from None


def count_configs(spec) -> int:
    """How many configs ``spec`` expands to, duplicates included: for each block the product of the lengths of
    tasks, methods, seeds and each vary list, summed.  Counted from the lengths, never by building them, and
    before validation (a value that is not a list counts as one)."""
    if not isinstance(spec, dict):
        return 0
    blocks = spec.get("blocks") if isinstance(spec.get("blocks"), list) and spec["blocks"] else [{}]
    total = 0
    for block in blocks:
        s = {**spec, **block} if isinstance(block, dict) else spec
        vary = s.get("vary") if isinstance(s.get("vary"), dict) else {}
        n = 1
        for v in [s.get("tasks"), s.get("methods"), s.get("seeds"), *vary.values()]:
            n *= len(v) if isinstance(v, list) else 1
        total += n
    return total


def load_spec(path: str | Path, max_configs: int | None = MAX_CONFIGS) -> dict:
    """The grid spec at ``path``, read (:func:`read_spec`), counted (at most ``max_configs`` configs; None: no
    limit) and validated (:func:`validate_spec`); ``name`` defaults to the file's stem."""
    p = Path(path)
    spec = read_spec(p)
    n = count_configs(spec)
    if max_configs is not None and n > max_configs:
        raise UserError(f"{p}: expands to {n:,} configs, more than the limit of {max_configs:,}; pass --allow-large "
                        f"to accept it, or split the grid")
    spec = validate_spec(spec, p)       # a mapping of known keys, each of the right type
    spec.setdefault("name", p.stem)
    return spec
