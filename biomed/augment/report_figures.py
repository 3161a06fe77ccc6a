"""Figures for the augmentation report, and the small helpers that read the summary's rows.

`report_html.py` embeds every figure as a base64 PNG, so each builder here returns a
`matplotlib.figure.Figure` (or None when there is nothing to draw) made on the Agg canvas
directly, without pyplot: no global backend switch, no window, no state shared between calls.
Colours follow the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies);
mode is shown by marker and line style, shuffled-label controls by hollow markers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from biomed.errors import InputError

OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
SOURCE_ORDER = ("diffusion", "phantom_oracle", "duplicates")
MACRO = ("macro_clear", "macro_all")
_COLOUR = {("diffusion", False): "blue", ("phantom_oracle", False): "green",
           ("duplicates", False): "purple", ("diffusion", True): "vermillion",
           ("phantom_oracle", True): "orange", ("duplicates", True): "sky"}
_SPARE = ("sky", "yellow", "purple", "orange")  # black is kept for the real-data curve
_MODE_STYLE = {"mix": ("o", "-"), "pretrain": ("s", "--")}
SAMPLE_TITLES = {"real": "real", "diffusion": "diffusion", "phantom_oracle": "phantom oracle"}

Row = Mapping[str, Any]


# ---- reading the summary -------------------------------------------------------------------

def num(x: Any) -> float:
    """A finite float from a summary value, else NaN (None, NaN, inf, bools, non-numbers)."""
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _key_num(x: Any) -> float:
    v = num(x)
    return math.inf if math.isnan(v) else v


def row_order(r: Row) -> tuple:
    """Sort key: fraction, source (diffusion, oracle, duplicates, others), mode, labels, ratio."""
    src = str(r.get("source"))
    rank = SOURCE_ORDER.index(src) if src in SOURCE_ORDER else len(SOURCE_ORDER)
    return (_key_num(r.get("fraction")), rank, src, str(r.get("mode")),
            bool(r.get("shuffled_labels")), _key_num(r.get("ratio")), str(r.get("endpoint")),
            str(r.get("metric")), str(r.get("subgroup") or "all"))


def gain_rows(summary: Mapping[str, Any], keep: Callable[[Row], bool]) -> list[Row]:
    """The `gains` rows (dicts only) that `keep` accepts, in report order."""
    rows = summary.get("gains")
    rows = rows if isinstance(rows, list | tuple) else []
    return sorted((r for r in rows if isinstance(r, Mapping) and keep(r)), key=row_order)


def is_row(r: Row, endpoint: str | None = None, metric: str | None = "auroc",
           subgroup: str | None = "all") -> bool:
    """True when the row has this endpoint / metric / subgroup (None: any)."""
    return ((endpoint is None or r.get("endpoint") == endpoint)
            and (metric is None or r.get("metric", "auroc") == metric)
            and (subgroup is None or (r.get("subgroup") or "all") == subgroup))


def arm_key(r: Row) -> tuple:
    """One arm = one line on a chart: (fraction, source, mode, shuffled labels)."""
    return (num(r.get("fraction")), str(r.get("source")), str(r.get("mode")),
            bool(r.get("shuffled_labels")))


def arm_label(r: Row, ratio: bool = False, fraction: bool = False) -> str:
    """'diffusion mix x4 (shuffled labels) @ 0.05': the parts asked for."""
    text = f"{r.get('source')} {r.get('mode')}"
    if ratio:
        text += f" x{fmt_g(r.get('ratio'))}"
    if r.get("shuffled_labels"):
        text += " (shuffled labels)"
    if fraction:
        text += f" @ real fraction {fmt_g(r.get('fraction'))}"
    return text


def fmt_g(x: Any) -> str:
    """A ratio or fraction in its shortest form ('4', '0.05'); 'n/a' when missing."""
    v = num(x)
    return "n/a" if math.isnan(v) else f"{v:g}"


def highest_ratio(rows: Iterable[Row]) -> list[Row]:
    """Per arm, the row with the highest ratio (the headline comparison)."""
    best: dict[tuple, Row] = {}
    for r in rows:
        k = arm_key(r)
        if k not in best or _key_num(r.get("ratio")) > _key_num(best[k].get("ratio")):
            best[k] = r
    return sorted(best.values(), key=row_order)


def many_fractions(rows: Iterable[Row]) -> bool:
    return len({fmt_g(r.get("fraction")) for r in rows}) > 1


# ---- drawing helpers -----------------------------------------------------------------------

def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (no 'Software' text chunk, so the page names no web address)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buf.getvalue()


def _fig(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas: no pyplot, no global backend
    return fig


def _plain(text: Any) -> str:
    """Text safe for matplotlib: a '$' would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def style(r: Row) -> dict[str, Any]:
    """Colour by source (and shuffled control), marker and line style by mode."""
    src, shuffled = str(r.get("source")), bool(r.get("shuffled_labels"))
    name = _COLOUR.get((src, shuffled)) or _SPARE[sum(map(ord, src)) % len(_SPARE)]
    marker, ls = _MODE_STYLE.get(str(r.get("mode")), ("^", ":"))
    colour = OKABE_ITO[name]
    return {"color": colour, "marker": marker, "linestyle": ls, "markeredgecolor": colour,
            "markerfacecolor": "white" if shuffled else colour}


def _ci_bars(ax: Axes, x: Sequence[float], y: Sequence[float], lo: Sequence[float],
             hi: Sequence[float], colour: str, horizontal: bool = False) -> None:
    """Error bars where the value and both CI ends are known (a single seed has none)."""
    x, y, lo, hi = (np.asarray(a, dtype=float) for a in (x, y, lo, hi))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return
    err = np.clip(np.vstack([y[ok] - lo[ok], hi[ok] - y[ok]]), 0, None)
    if horizontal:
        ax.errorbar(y[ok], x[ok], xerr=err, fmt="none", ecolor=colour, capsize=3, lw=1.2)
    else:
        ax.errorbar(x[ok], y[ok], yerr=err, fmt="none", ecolor=colour, capsize=3, lw=1.2)


def _groups(rows: Iterable[Row], key: Callable[[Row], Any]) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _gain_lines(ax: Axes, rows: Sequence[Row], ratios: Sequence[float], label_fraction: bool,
                offset: float = 0.07) -> None:
    """Gain against ratio (categorical x), one dodged line per arm, CI bars, zero line."""
    pos = {v: i for i, v in enumerate(ratios)}
    arms = _groups(rows, arm_key)
    for k, rs in enumerate(arms.values()):
        shift = (k - (len(arms) - 1) / 2) * min(offset, 0.5 / max(len(arms), 1))
        rs = [r for r in rs if num(r.get("ratio")) in pos]
        x = [pos[num(r.get("ratio"))] + shift for r in rs]
        y = [num(r.get("value")) for r in rs]
        st = style(rs[0]) if rs else {}
        if rs:
            ax.plot(x, y, label=_plain(arm_label(rs[0], fraction=label_fraction)), ms=6, **st)
            _ci_bars(ax, x, y, [num(r.get("ci_low")) for r in rs],
                     [num(r.get("ci_high")) for r in rs], st["color"])
    ax.axhline(0, color="0.35", linestyle="--", lw=1)
    ax.set_xticks(range(len(ratios)), [f"x{v:g}" for v in ratios])
    ax.set_xlim(-0.5, len(ratios) - 0.5)


def _finite_ratios(rows: Iterable[Row]) -> list[float]:
    return sorted({v for v in (num(r.get("ratio")) for r in rows) if not math.isnan(v)})


def _panels(n: int, ncols: int, w: float, h: float) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _fig(w * ncols + 0.6, h * nrows + 0.6)
    axes = list(fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend_below(fig: Figure, axes: Sequence[Axes]) -> None:
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(3, len(handles)), fontsize=8)


# ---- the figures ---------------------------------------------------------------------------

def steps_curve(steps: Mapping[str, Any]) -> Figure | None:
    """Validation macro AUROC of the ratio-0 baseline against training steps, S marked."""
    curves = [(f, e) for f, e in steps.items() if isinstance(e, Mapping) and e.get("curve")]
    if not curves:
        return None
    fig = _fig(6.0, 3.2)
    ax = fig.add_subplot()
    colours = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "orange", "purple", "sky")]
    for i, (frac, e) in enumerate(sorted(curves, key=lambda t: _key_num(t[0]))):
        pts = [(num(p[0]), num(p[1])) for p in e["curve"]
               if isinstance(p, Sequence) and not isinstance(p, str) and len(p) >= 2]
        pts.sort()
        c = colours[i % len(colours)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=c,
                label=_plain(f"real fraction {frac}"))
        chosen = [p for p in pts if p[0] == num(e.get("S"))]
        if chosen:
            ax.plot([chosen[0][0]], [chosen[0][1]], marker="*", ms=14, color=c, linestyle="none")
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation macro AUROC")
    ax.set_title("Step budget: ratio-0 baseline on validation (star = chosen S)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def primary_gain(rows: Sequence[Row]) -> Figure | None:
    """The primary endpoint: macro_clear AUROC gain against ratio, one line per arm."""
    ratios = _finite_ratios(rows)
    if not rows or not ratios:
        return None
    fig = _fig(8.0, 4.2)
    ax = fig.add_subplot()
    _gain_lines(ax, rows, ratios, many_fractions(rows))
    ax.set_xlabel("synthetic images per real image (ratio)")
    ax.set_ylabel("macro AUROC gain, clear findings")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def mode_pairs(rows: Sequence[Row]) -> Figure | None:
    """Mix against pretrain: per source, the two modes side by side at each ratio, paired."""
    rows = [r for r in rows if not r.get("shuffled_labels") and not math.isnan(num(r.get("ratio")))]
    ratios = _finite_ratios(rows)
    if not rows or not ratios:
        return None
    multi = many_fractions(rows)
    groups = _groups(rows, lambda r: (num(r.get("fraction")), str(r.get("source"))))
    fig, axes = _panels(len(groups), 3, 3.2, 2.9)
    for ax, ((frac, src), rs) in zip(axes, groups.items(), strict=True):
        modes = list(_groups(rs, lambda r: str(r.get("mode"))).items())
        for j, (_mode, mrs) in enumerate(modes):
            shift = (j - (len(modes) - 1) / 2) * 0.22
            x = [ratios.index(num(r.get("ratio"))) + shift for r in mrs]
            y = [num(r.get("value")) for r in mrs]
            st = dict(style(mrs[0]), linestyle="none")
            ax.plot(x, y, ms=7, label=_plain(str(mrs[0].get("mode"))), **st)
            _ci_bars(ax, x, y, [num(r.get("ci_low")) for r in mrs],
                     [num(r.get("ci_high")) for r in mrs], st["color"])
        for ratio_rows in _groups(rs, lambda r: num(r.get("ratio"))).values():
            if len(ratio_rows) > 1:  # thin grey line pairs the modes at one ratio
                i = ratios.index(num(ratio_rows[0].get("ratio")))
                ys = [num(r.get("value")) for r in ratio_rows]
                xs = [i + (j - (len(ratio_rows) - 1) / 2) * 0.22 for j in range(len(ys))]
                ax.plot(xs, ys, color="0.6", lw=0.8, zorder=0)
        ax.axhline(0, color="0.35", linestyle="--", lw=1)
        ax.set_xticks(range(len(ratios)), [f"x{v:g}" for v in ratios])
        ax.set_xlim(-0.6, len(ratios) - 0.4)
        ax.set_title(_plain(src + (f" @ {frac:g}" if multi else "")), fontsize=10)
        ax.set_xlabel("ratio")
    axes[0].set_ylabel("macro AUROC gain, clear findings")
    _legend_below(fig, axes)
    return fig


def forest(rows: Sequence[Row]) -> Figure | None:
    """One row per arm and ratio: the gain and its CI against a zero line."""
    if not rows:
        return None
    multi, n = many_fractions(rows), len(rows)
    fig = _fig(7.5, 0.32 * n + 1.3)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        y, st = n - 1 - i, style(r)
        ax.plot([num(r.get("value"))], [y], ms=6, **dict(st, linestyle="none"))
        _ci_bars(ax, [y], [num(r.get("value"))], [num(r.get("ci_low"))],
                 [num(r.get("ci_high"))], st["color"], horizontal=True)
    ax.axvline(0, color="0.35", linestyle="--", lw=1)
    ax.set_yticks(range(n), [_plain(arm_label(r, ratio=True, fraction=multi))
                             for r in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("macro AUROC gain, clear findings (95% CI)")
    return fig


def per_finding(rows: Sequence[Row], findings: Sequence[str]) -> Figure | None:
    """Small multiples: one panel per finding, AUROC gain against ratio per arm."""
    ratios = _finite_ratios(rows)
    by_finding = _groups(rows, lambda r: str(r.get("endpoint")))
    order = [f for f in findings if f in by_finding] + [f for f in by_finding if f not in findings]
    if not order or not ratios:
        return None
    fig, axes = _panels(len(order), 3, 3.0, 2.5)
    multi = many_fractions(rows)
    for ax, finding in zip(axes, order, strict=True):
        _gain_lines(ax, by_finding[finding], ratios, multi)
        ax.set_title(_plain(finding), fontsize=10)
    axes[0].set_ylabel("AUROC gain")
    _legend_below(fig, axes)
    return fig


def real_curve(curve: Sequence[Row], arms: Sequence[Row]) -> Figure | None:
    """Macro AUROC against real fraction (log x), with each arm's baseline + gain marked."""
    curve = sorted((r for r in curve if num(r.get("fraction")) > 0),  # NaN compares False
                   key=lambda r: num(r.get("fraction")))
    if not curve:
        return None
    fig = _fig(8.0, 4.2)
    ax = fig.add_subplot()
    x = [num(r.get("fraction")) for r in curve]
    y = [num(r.get("value")) for r in curve]
    ax.plot(x, y, marker="o", color="black", label="real images only")
    _ci_bars(ax, x, y, [num(r.get("ci_low")) for r in curve],
             [num(r.get("ci_high")) for r in curve], "black")
    multi = many_fractions(arms)
    for k, r in enumerate(arms):
        base, frac = num(r.get("baseline")), num(r.get("fraction"))
        total = base + num(r.get("value"))
        if math.isnan(total) or math.isnan(frac) or frac <= 0:
            continue
        st, xk = style(r), frac * 1.03 ** (k + 1)  # dodge on the log axis
        ax.axhline(total, color=st["color"], linestyle=":", lw=1)
        ax.plot([xk], [total], ms=7, label=_plain(arm_label(r, ratio=True, fraction=multi)),
                **dict(st, linestyle="none"))
        _ci_bars(ax, [xk], [total], [base + num(r.get("ci_low"))],
                 [base + num(r.get("ci_high"))], st["color"])
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.minorticks_off()
    ax.set_xlabel("fraction of the real training pool (log scale)")
    ax.set_ylabel("test macro AUROC, clear findings")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _image(img: Any, where: str) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32).squeeze()
    if a.ndim != 2:
        raise InputError("samples", f"{where}: image must be 2-D (H x W), got shape {a.shape}")
    return a


def images(x: Any) -> list[Any]:
    """The images of one grid cell: a list, tuple or stacked N x H x W array; [] otherwise."""
    if isinstance(x, np.ndarray):
        return list(x) if x.ndim == 3 else [x] if x.ndim == 2 else []
    return list(x) if isinstance(x, list | tuple) else []


def sample_grid(finding: str, per_source: Mapping[str, Any], max_per: int = 4) -> Figure | None:
    """One row of thumbnails: real | diffusion | phantom oracle (gray, 0..1); missing skipped."""
    names = [s for s in SAMPLE_TITLES if s in per_source]
    names += sorted(str(s) for s in per_source if s not in SAMPLE_TITLES)
    cols = [(s, [_image(im, f"{finding}/{s}") for im in images(per_source[s])[:max_per]])
            for s in names]
    cols = [(s, imgs) for s, imgs in cols if imgs]
    if not cols:
        return None
    counts = [len(imgs) for _, imgs in cols]
    fig = _fig(1.35 * sum(counts) + 0.4, 2.0)
    subs = fig.subfigures(1, len(cols), squeeze=False, width_ratios=counts)[0]
    for sub, (name, imgs) in zip(subs, cols, strict=True):
        sub.suptitle(_plain(SAMPLE_TITLES.get(name, name)), fontsize=10)
        for ax, img in zip(sub.subplots(1, len(imgs), squeeze=False)[0], imgs, strict=True):
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_axis_off()
    return fig
