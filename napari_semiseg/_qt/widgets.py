"""Small pieces both docks use: notification text, status line, labels that wrap, the
prediction colours, the shared dock width and the balancing of the dock column. The docks
import this module, never each other (a dock tells its role by ``dock_role``)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QRect, Qt, QTimer
from qtpy.QtWidgets import QLabel, QSizePolicy, QWidget

from napari_semiseg._qt.layers import balance_docks
from napari_semiseg._train_process import ChildError
from src_models.errors import SemisegError

#: class colours of the live preview, the prediction and the pseudo-labels: bright,
#: unlike napari's default label colours of the training labels (class 1, 2, ...)
PREDICTION_COLORS = ("#ffee58", "#76ff03", "#ff4081", "#00e5ff", "#ff9100", "#ea80fc")
#: longest notification text (the full message stays in the dock's status line)
NOTIFICATION_CHARS = 160


def prediction_colormap() -> Any:
    """A napari label colormap for predicted classes (0 transparent), distinct from the
    default colours of the training labels."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {None: "#ffffff", 0: "transparent"}
    for i, color in enumerate(PREDICTION_COLORS, start=1):
        colors[i] = color
    return DirectLabelColormap(color_dict=colors)


def short(message: str, limit: int = NOTIFICATION_CHARS) -> str:
    """``message`` for a notification: whole when short, else cut at a sentence end (or
    at ``limit`` characters) with a pointer to the dock's status line, which keeps it all."""
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(". "), head.rfind("; "))
    head = head[: cut + 1] if cut >= limit // 3 else head.rstrip() + "…"
    return f"{head} (more in the dock)"


#: the width napari's dock column gets from the docks (their content fits from ~230 px)
DOCK_WIDTH = 340


def balance_later(widget: QWidget, again: bool = False) -> None:
    """Once the event loop has placed the dock: share its column between the training and
    review docks (:func:`balance_docks`), once per viewer so a user's own split stays
    (``again``: also after that, when a dock's own content changed its needs)."""
    session = getattr(widget, "session", None)
    if session is None or (session.docks_balanced and not again):
        return

    def balance() -> None:
        if (session.docks_balanced and not again) or getattr(widget, "_closed", True):
            return
        docks = [
            w for w in widget.window().findChildren(QWidget) if not getattr(w, "_closed", True)
        ]
        trainings = [w for w in docks if getattr(w, "dock_role", "") == "training"]
        reviews = [w for w in docks if getattr(w, "dock_role", "") == "review"]
        if trainings and reviews and balance_docks(trainings[0], reviews[0]):
            session.docks_balanced = True

    QTimer.singleShot(0, balance)


class StatusLine(QLabel):
    """A status label of at most ``LINES`` wrapped lines (so a long message never squeezes
    the loss curve): a longer text is cut at a word with "…" (never a line cut in half),
    and the whole text is its tooltip."""

    LINES = 3

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self._full = ""
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(40)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        fm = self.fontMetrics()
        self.setFixedHeight(fm.height() + fm.lineSpacing() * (self.LINES - 1) + 6)
        self.setText(text)

    def text_shown(self) -> str:
        return super().text()

    def _fits(self, text: str, width: int) -> bool:
        rect = self.fontMetrics().boundingRect(
            QRect(0, 0, width, 1 << 20), int(Qt.TextFlag.TextWordWrap), text
        )
        return rect.height() <= self.height() - 4

    def _fitted(self, text: str) -> str:
        width = self.contentsRect().width()
        if width <= 20 or self._fits(text, width):
            return text
        words = text.split(" ")
        lo, hi = 0, len(words)  # the most words that fit with "…"
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._fits(" ".join(words[:mid]) + " …", width):
                lo = mid
            else:
                hi = mid - 1
        return " ".join(words[:lo]) + " …"

    def setText(self, text: str) -> None:  # noqa: N802  (Qt override)
        self._full = text
        super().setText(self._fitted(text))
        self.setToolTip(text)

    def text(self) -> str:  # noqa: D102  (the whole message, not the cut one)
        return self._full

    def resizeEvent(self, event) -> None:  # noqa: N802  (Qt override)
        super().resizeEvent(event)
        super().setText(self._fitted(self._full))


def wrapping_label(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setMinimumWidth(40)
    return label


def error_message(exc: BaseException) -> str:
    """The core's message for SemisegError; type and message for anything unexpected."""
    if isinstance(exc, SemisegError):
        return str(exc)
    kind = exc.kind if isinstance(exc, ChildError) else type(exc).__name__
    return f"unexpected {kind}: {exc} (see the console for the traceback)"
