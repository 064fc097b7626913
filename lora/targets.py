"""Which ``nn.Linear`` layers a ``targets`` spec selects: one rule for :func:`lora.add_lora` and
:func:`lora.collect_layer_stats`, so that statistics are keyed exactly as the adapters look them up."""
from __future__ import annotations

import re
from typing import Sequence

from torch import nn


def matches(name: str, targets: str | Sequence[str]) -> bool:
    """Whether module ``name`` is selected: ``targets`` is a regex over the full name, or a list of names
    (a module matches one when its name equals it or ends with ``"." + name``)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def no_match_error(model: nn.Module, targets: str | Sequence[str]) -> ValueError:
    """The one-line error for ``targets`` that select no ``nn.Linear`` of ``model``, naming some that exist."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return ValueError(f"targets {targets!r} matched no nn.Linear; Linear layers include: "
                      f"{', '.join(linears[:8])}{' ...' if len(linears) > 8 else ''}")
