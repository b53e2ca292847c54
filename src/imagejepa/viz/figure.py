"""Shared matplotlib helpers: figures sized in panels, image panels, PNG bytes and files.

A figure of ``rows x cols`` panels is exactly ``cols * panel_width`` by ``rows * panel_height``
pixels: saved at ``DPI`` without ``bbox_inches="tight"`` (which would crop it to its content).
Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas, never through
pyplot's global state, so making pictures in a library or a server thread is safe.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import MissingDependencyError, UsageError
from ..utils.files import atomic_write

DPI = 100
PANEL_PX = 160  # an image panel: square
PLOT_PX = (360, 260)  # a plot panel: (width, height)
MAX_COLUMNS = 8  # image panels per row before wrapping
TITLE_SIZE = 7


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("imagejepa viz needs matplotlib: pip install matplotlib") from None
    return Figure


def panel_figure(rows: int, cols: int, panel_px: tuple[int, int] = (PANEL_PX, PANEL_PX)):
    """``(Figure, axes (rows, cols) array)`` of ``cols * panel_px[0]`` x ``rows * panel_px[1]`` pixels."""
    width, height = panel_px
    fig = _figure_class()(figsize=(cols * width / DPI, rows * height / DPI), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def pixel_size(rows: int, cols: int, panel_px: tuple[int, int] = (PANEL_PX, PANEL_PX)) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG of a ``rows x cols`` panel figure."""
    return cols * panel_px[0], rows * panel_px[1]


def image_layout(fig, rows: int, title_px: int = 14, margin_px: int = 2) -> None:
    """Margins for ``rows`` of image panels: ``title_px`` above each panel for its title."""
    height = fig.get_figheight() * DPI
    top, bottom = 1 - title_px / height, margin_px / height
    axes_px = ((top - bottom) * height - (rows - 1) * title_px) / rows
    side = margin_px / (fig.get_figwidth() * DPI)
    fig.subplots_adjust(left=side, right=1 - side, top=top, bottom=bottom, wspace=0.04,
                        hspace=title_px / axes_px)


def show_image(ax, image: torch.Tensor, title: str = "", colour: str = "black") -> None:
    """uint8 ``(3, H, W)`` (or ``(1, H, W)``: drawn with ``cmap="gray"``) into ``ax``, no axes."""
    image = image.detach().cpu()
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE, color=colour, pad=2)


def hide(ax) -> None:
    """An unused panel of the grid: left blank."""
    ax.set_axis_off()


def grid_shape(count: int, max_columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """``(rows, cols)`` for ``count`` panels, at most ``max_columns`` a row."""
    cols = min(count, max_columns)
    return -(-count // cols), cols


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, at exactly its size in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to the figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_png(data: bytes, out: str | Path) -> Path:
    """Write PNG bytes to ``out`` atomically (a crash leaves the old file or the new one)."""
    out = Path(out)
    check_png_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    return out


def check_png_path(out: str | Path) -> None:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must end in .png, got {str(out)!r}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name ending in .png")


def check_count(flag: str, value: int, low: int = 1, high: int | None = None) -> None:
    """A count argument in ``[low, high]``, else a :class:`UsageError` naming the flag."""
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise UsageError(f"{flag} must be {allowed}, got {value}")


def png_pixel_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG file, from its header."""
    with open(path, "rb") as f:
        header = f.read(24)
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
