"""A small live plot of the training logs, drawn with QPainter (no plotting dependency).

Loss terms are drawn on a log scale (left axis, decades labelled); ratios in 0..1 such as the
pseudo-label mask ratio on a linear right axis, dashed. Each series is shown as a faint raw
line and a bold exponential moving average; long runs are binned to one point per pixel
column, so repainting stays cheap however many iterations are logged.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPalette, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_semiseg._jobs import LossHistory

PALETTE = (
    "#4fc3f7",
    "#ffb74d",
    "#81c784",
    "#e57373",
    "#ba68c8",
    "#fff176",
    "#90a4ae",
    "#f06292",
    "#4db6ac",
    "#a1887f",
)
EMA = 0.1  #: smoothing weight of the moving average


def is_ratio(name: str) -> bool:
    """Logs drawn on the 0..1 axis: mask/pseudo-label ratios and fractions."""
    low = name.lower()
    return low.endswith("ratio") or low.startswith("mask") or low.endswith("fraction")


def smooth(values: np.ndarray, weight: float = EMA) -> np.ndarray:
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = acc + weight * (v - acc)
        out[i] = acc
    return out


def binned(xs: np.ndarray, ys: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``ys`` over at most ``bins`` equal runs of points."""
    if len(xs) <= bins:
        return xs, ys
    edges = np.linspace(0, len(xs), bins + 1).astype(int)
    return (
        np.array([xs[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]),
        np.array([ys[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]),
    )


def log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """(log10 value, label) ticks covering [lo, hi] (log10 units), from the tick just below
    to the one just above: decades for wide ranges, 1-2-5 steps (all labelled) for narrow."""
    wide = hi - lo >= 2
    mantissas = (1,) if wide else (1, 2, 5)
    values = [
        k + math.log10(m) for k in range(math.floor(lo) - 1, math.ceil(hi) + 2) for m in mantissas
    ]
    below = max((v for v in values if v <= lo + 1e-9), default=values[0])
    above = min((v for v in values if v >= hi - 1e-9), default=values[-1])
    chosen = [v for v in values if below - 1e-9 <= v <= above + 1e-9]
    return [(v, f"{10.0**v:.3g}" if -2 <= v <= 3 else f"1e{round(v)}") for v in chosen]


class LossPlot(QWidget):
    """Draws a :class:`LossHistory`; call :meth:`refresh` after the history grew."""

    def __init__(self, history: LossHistory | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.history = history or LossHistory()
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip(
            "Training losses (log scale, left) and ratios (0-1, right, dashed); "
            "faint: per iteration, bold: moving average"
        )

    def set_history(self, history: LossHistory) -> None:
        self.history = history
        self.update()

    def refresh(self) -> None:
        self.update()

    # -- drawing ----------------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802  (Qt override)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fg = pal.color(QPalette.ColorRole.WindowText)
        grid = QColor(fg)
        grid.setAlpha(40)
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        series = {k: v for k, v in self.history.series.items() if v[0]}
        names = list(series)
        colors = {n: QColor(PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)}
        fm = p.fontMetrics()
        legend_h = self._draw_legend(p, names, colors, fm.height())
        has_ratio = any(is_ratio(n) for n in names)
        left, right = (
            fm.horizontalAdvance("1e-10") + 8,
            (fm.horizontalAdvance("1.0") + 8 if has_ratio else 8),
        )
        area = QRectF(
            left,
            legend_h + 4,
            self.width() - left - right,
            self.height() - legend_h - fm.height() - 10,
        )
        p.setPen(QPen(grid))
        p.drawRect(area)
        if not names or area.width() < 20 or area.height() < 20:
            p.setPen(fg)
            p.drawText(
                QRectF(self.rect()),
                Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                "the losses appear here during training",
            )
            p.end()
            return
        x_max = max(max(xs) for xs, _ in series.values())
        x_min = min(min(xs) for xs, _ in series.values())
        x_span = max(x_max - x_min, 1)

        losses = [
            np.log10(np.asarray(ys)[np.asarray(ys) > 0])
            for n, (_, ys) in series.items()
            if not is_ratio(n)
        ]
        losses = [v[np.isfinite(v)] for v in losses if v.size]
        lo = min((float(v.min()) for v in losses if v.size), default=-1.0)
        hi = max((float(v.max()) for v in losses if v.size), default=0.0)
        ticks = log_ticks(lo, hi)
        lo, hi = min(lo, ticks[0][0]), max(hi, ticks[-1][0])
        if hi - lo < 0.3:
            lo, hi = lo - 0.15, hi + 0.15

        def px(x: float) -> float:
            return area.left() + (x - x_min) / x_span * area.width()

        def py_log(v: float) -> float:
            return area.bottom() - (v - lo) / (hi - lo) * area.height()

        def py_ratio(v: float) -> float:
            return area.bottom() - min(max(v, 0.0), 1.0) * area.height()

        # axes: log ticks on the left, 0 / 0.5 / 1 on the right
        p.setPen(fg)
        last_label_y = math.inf  # labels never overlap: on a short plot some are left out
        for v, label in ticks:
            if lo <= v <= hi:
                y = py_log(v)
                p.setPen(QPen(grid))
                p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
                if label and last_label_y - y >= fm.height():
                    last_label_y = y
                    p.setPen(fg)
                    p.drawText(
                        QRectF(0, y - fm.height() / 2, left - 4, fm.height()),
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                        label,
                    )
        if has_ratio:
            for v in (0.0, 0.5, 1.0):
                p.drawText(
                    QRectF(area.right() + 4, py_ratio(v) - fm.height() / 2, right, fm.height()),
                    Qt.AlignmentFlag.AlignVCenter,
                    f"{v:g}",
                )
        p.drawText(
            QRectF(area.left(), area.bottom() + 2, area.width(), fm.height() + 4),
            Qt.AlignmentFlag.AlignRight,
            f"iteration {x_max}",
        )
        p.drawText(
            QRectF(area.left(), area.bottom() + 2, area.width(), fm.height() + 4),
            Qt.AlignmentFlag.AlignLeft,
            f"{x_min}",
        )

        p.setClipRect(area)
        bins = max(2, int(area.width()))
        for name, (xs, ys) in series.items():
            xs_a, ys_a = np.asarray(xs, float), np.asarray(ys, float)
            ratio = is_ratio(name)
            if not ratio:
                keep = ys_a > 0
                xs_a, ys_a = xs_a[keep], np.log10(ys_a[keep])
            keep = np.isfinite(ys_a)
            xs_a, ys_a = xs_a[keep], ys_a[keep]
            if not xs_a.size:
                continue
            to_y = py_ratio if ratio else py_log
            faint = QColor(colors[name])
            faint.setAlpha(70)
            style = Qt.PenStyle.DashLine if ratio else Qt.PenStyle.SolidLine
            self._polyline(p, *binned(xs_a, ys_a, bins), px, to_y, QPen(faint, 1, style))
            self._polyline(
                p, *binned(xs_a, smooth(ys_a), bins), px, to_y, QPen(colors[name], 2, style)
            )
        p.end()

    @staticmethod
    def _polyline(p: QPainter, xs, ys, px, py, pen: QPen) -> None:
        path = QPainterPath(QPointF(px(xs[0]), py(ys[0])))
        for x, y in zip(xs[1:], ys[1:], strict=True):
            path.lineTo(px(x), py(y))
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        if len(xs) == 1:
            p.drawEllipse(QPointF(px(xs[0]), py(ys[0])), 2, 2)
        else:
            p.drawPath(path)

    def _draw_legend(self, p: QPainter, names, colors, line_h: int) -> int:
        """Wrapped legend along the top; returns its height."""
        fm = p.fontMetrics()
        x, y = 6, 2
        for name in names:
            w = fm.horizontalAdvance(name) + 22
            if x + w > self.width() and x > 6:
                x, y = 6, y + line_h + 2
            p.fillRect(QRectF(x, y + line_h / 2 - 4, 10, 8), colors[name])
            p.setPen(self.palette().color(QPalette.ColorRole.WindowText))
            p.drawText(QRectF(x + 14, y, w, line_h), Qt.AlignmentFlag.AlignVCenter, name)
            x += w
        return y + line_h + 2
