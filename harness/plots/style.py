"""The one home of figure styling, saving and the manifest: every figure of :mod:`harness.plots` is a
matplotlib ``Figure`` that is never registered with pyplot (no global state, nothing to close), saved
atomically (:func:`harness.logs.write_atomic`) or shown as a PNG, and each saved file gets a manifest entry
``{"path", "caption", "runs"}`` whose caption names the runs it is built from."""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..logs import write_atomic, write_json_atomic

# The size rule: a figure is drawn at the size the book shows it.  The book's content column is at least
# CONTENT_PX wide at a 1280 px window (book/_static/custom.css caps images at that width), a figure is at most
# MAX_WIDTH_IN wide and is shown at PX_PER_IN pixels per inch, so a font of FONT_MIN_PT points is
# FONT_MIN_PT·PX_PER_IN/72 ≈ 9.7 px on screen.  PNGs are written at DPI = 2·PX_PER_IN (sharp on 2× screens;
# the browser shows them at half their pixel width, which custom.css enforces with max-width).
CONTENT_PX = 690
PX_PER_IN = 100
MAX_WIDTH_IN = CONTENT_PX / PX_PER_IN
FONT_MIN_PT = 7.0
DPI = 2 * PX_PER_IN
FONTS = {"font.size": 8.0, "axes.titlesize": 8.5, "axes.labelsize": 8.0, "xtick.labelsize": FONT_MIN_PT,
         "ytick.labelsize": FONT_MIN_PT, "legend.fontsize": FONT_MIN_PT, "legend.title_fontsize": 7.5,
         "figure.titlesize": 9.0}


def fit_width(figsize) -> tuple[float, float]:
    """``figsize`` with its width capped at :data:`MAX_WIDTH_IN` (the height kept: panels get narrower, their
    text keeps its size)."""
    w, h = figsize
    return (min(float(w), MAX_WIDTH_IN), float(h))


def new_figure(nrows: int = 1, ncols: int = 1, panel=(3.4, 2.6), size=None, min_cols: int = 1,
               squeeze: bool = False, **kw):
    """(Figure, axes): ``size`` = the whole figure in inches, else ``panel`` per subplot over
    max(ncols, ``min_cols``) columns, the width capped by :func:`fit_width`; constrained layout; axes a 2-d
    array unless ``squeeze``."""
    from matplotlib.figure import Figure
    figsize = fit_width(size if size is not None else (panel[0] * max(ncols, min_cols), panel[1] * nrows))
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kw)


def style():
    """Seaborn styling as a context manager (rcParams are restored afterwards)."""
    import matplotlib as mpl
    import seaborn as sns

    @contextlib.contextmanager
    def ctx():
        with mpl.rc_context(), sns.axes_style("whitegrid"), sns.plotting_context("paper", rc=FONTS):
            yield
    return ctx()


def method_colors() -> dict:
    """One tab10 colour per method of :data:`harness.config.METHODS`."""
    import seaborn as sns

    from ..config import METHODS
    return dict(zip(METHODS, sns.color_palette("tab10", len(METHODS))))


def png(fig, dpi: int = DPI) -> bytes:
    """A Figure as PNG bytes (for ``IPython.display.Image(data=...)``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def show(fig, path=None, dpi: int = DPI) -> None:
    """Display a Figure as a PNG (a page's cell output), optionally also writing it to ``path``; the width is
    capped by :func:`fit_width` first (the figure is drawn at the size it is shown)."""
    from IPython.display import Image, display
    fig.set_size_inches(*fit_width(fig.get_size_inches()))
    data = png(fig, dpi)
    if path is not None:
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
    display(Image(data=data))


def save(fig, fig_dir, name: str) -> Path:
    """``fig_dir/<name>.png`` at :data:`DPI`, atomically, its width capped by :func:`fit_width`; the figure is
    cleared afterwards."""
    fig.set_size_inches(*fit_width(fig.get_size_inches()))
    path = write_atomic(Path(fig_dir) / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    fig.clear()
    return path


SIGNIFICANT = 6     # digits kept in every number of a figure's table: reruns on other BLAS thread counts differ
                    # in the last bits of float32 results (~1e-7 relative), so the files stay byte-identical


def significant(x, digits: int = SIGNIFICANT):
    """``x`` rounded to ``digits`` significant digits (floats only; ints, None, NaN and text unchanged)."""
    if isinstance(x, (float, np.floating)) and math.isfinite(x) and x != 0:
        return float(f"{float(x):.{digits - 1}e}")
    return float(x) if isinstance(x, np.floating) else x


def write_table(df, fig_dir, stem: str, json_too: bool = True) -> Path:
    """``fig_dir/<stem>.csv`` (list cells, e.g. singular values, as JSON text) and, with ``json_too``,
    ``<stem>.json`` (records); every number rounded to :data:`SIGNIFICANT` significant digits.  Returns the
    CSV's path."""
    d = Path(fig_dir)
    out = df.copy()
    for c in out.columns:
        if out[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            out[c] = out[c].map(lambda v: json.dumps([significant(float(x)) for x in v])
                                if isinstance(v, (list, tuple, np.ndarray)) else v)
        elif out[c].dtype.kind == "f" or out[c].map(lambda v: isinstance(v, float)).any():
            out[c] = out[c].map(significant).astype(object if out[c].dtype.kind != "f" else float)
    csv = write_atomic(d / f"{stem}.csv", lambda tmp: out.to_csv(tmp, index=False))
    if json_too:
        rounded = _round_records(json.loads(df.to_json(orient="records", double_precision=15)))
        write_json_atomic(d / f"{stem}.json", rounded)
    return csv


def _round_records(obj):
    if isinstance(obj, dict):
        return {k: _round_records(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_records(v) for v in obj]
    return significant(obj)


def entry(path: Path, caption: str, logs: list[dict]) -> dict:
    """A manifest entry: the file, its caption, and the run ids it is built from."""
    return {"path": str(path), "caption": caption, "runs": sorted(lg["run_id"] for lg in logs)}


def merge_manifest(fig_dir, entries: dict) -> None:
    """Add ``entries`` to ``fig_dir/manifest.json`` (created if needed)."""
    path = Path(fig_dir) / "manifest.json"
    old = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    write_json_atomic(path, {**old, **entries})


def in_notebook() -> bool:
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def display_entries(manifest: dict, show: bool | None) -> None:
    """In a Jupyter kernel (``show=None``) or when asked, show the saved PNGs with their captions."""
    if not (in_notebook() if show is None else show):
        return
    try:
        from IPython.display import Image, Markdown, display
    except ImportError:
        return
    for name, e in manifest.items():
        if e["path"].endswith(".png"):
            display(Image(filename=e["path"]))
            display(Markdown(f"**{name}**: {e['caption']}"))
