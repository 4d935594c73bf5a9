"""Point labels that never overlap: a small, deterministic greedy placement.

Each label goes to the first free spot on rings of growing radius around its point
(right, above, left, below, then the diagonals), where "free" means inside the axes
and clear of every label already placed, every point's marker and the obstacles given
(the legend). A label placed away from its point gets a thin leader line. Placement
works in display coordinates, so the figure's layout must be final first (call
``tight_layout`` before, and save with the figure's own dpi and no ``bbox_inches``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

RING_STEP_PT = 6.0  # distance between rings, in points
MAX_RINGS = 60
DIRECTIONS = 16  # spots tried per ring
MARKER_RADIUS_PT = 6.0  # the marker and the frontier's ring around it
LEADER_FROM_PT = 10.0  # labels further than this from their point get a leader line


def _directions() -> list[tuple[float, float]]:
    """Unit vectors: the four sides first (the most readable spots), then the rest of the circle."""
    sides = [0, 4, 8, 12]
    order = sides + [i for i in range(DIRECTIONS) if i not in sides]
    return [(math.cos(2 * math.pi * i / DIRECTIONS), math.sin(2 * math.pi * i / DIRECTIONS)) for i in order]


def _overlaps(box: Bbox, others: Sequence[Bbox]) -> bool:
    return any(box.overlaps(other) for other in others)


def place_labels(
    figure: Figure,
    ax: Axes,
    points: Sequence[tuple[str, float, float]],
    obstacles: Sequence[Artist] = (),
    fontsize: float = 7,
) -> list[Annotation]:
    """Annotate each ``(text, x, y)`` (data coordinates) so that no two labels' boxes intersect.

    When no ring inside the axes has room (hundreds of labels), the label goes to the last
    spot tried; with the numbers of variants a recipe has, every label finds room.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    if not isinstance(figure.canvas, FigureCanvasAgg):
        raise TypeError("labels are placed on an Agg canvas (matplotlib.use('Agg'))")
    renderer = figure.canvas.get_renderer()
    px_per_pt = figure.dpi / 72
    area = ax.get_window_extent(renderer)
    centers = [ax.transData.transform((x, y)) for _, x, y in points]
    r = MARKER_RADIUS_PT * px_per_pt
    taken = [Bbox.from_extents(cx - r, cy - r, cx + r, cy + r) for cx, cy in centers]
    taken += [artist.get_window_extent(renderer) for artist in obstacles]

    def annotate(text: str, x: float, y: float, offset: tuple[float, float], leader: dict | None = None) -> Annotation:
        return ax.annotate(
            text,
            (x, y),
            xytext=offset,
            textcoords="offset points",
            fontsize=fontsize,
            ha="left",
            va="bottom",
            arrowprops=leader,
        )

    placed = []
    for (text, x, y), (cx, cy) in zip(points, centers, strict=True):
        probe = annotate(text, x, y, (0, 0))
        size = probe.get_window_extent(renderer)  # where the text's box sits relative to its anchor
        probe.remove()
        box = _free_spot(cx, cy, size.width, size.height, (r + px_per_pt, RING_STEP_PT * px_per_pt), area, taken)
        offset = ((box.x0 - size.x0) / px_per_pt, (box.y0 - size.y0) / px_per_pt)
        far = math.hypot(box.x0 + box.width / 2 - cx, box.y0 + box.height / 2 - cy) > LEADER_FROM_PT * px_per_pt
        leader = {"arrowstyle": "-", "color": "0.55", "lw": 0.6, "shrinkA": 1, "shrinkB": 3} if far else None
        placed.append(annotate(text, x, y, offset, leader))
        taken.append(box)
    return placed


def _free_spot(
    cx: float,
    cy: float,
    width: float,
    height: float,
    rings: tuple[float, float],
    area: Bbox,
    taken: Sequence[Bbox],
) -> Bbox:
    """The first box of the given size around (cx, cy) on rings ``rings = (first radius, step)`` (display
    units), inside ``area`` and clear of ``taken``; the last one tried when none is."""
    from matplotlib.transforms import Bbox

    box = Bbox.from_bounds(cx, cy, width, height)
    first, step = rings
    for ring in range(MAX_RINGS):
        gap = first + ring * step
        for dx, dy in _directions():
            # the label's nearest edge faces the point: left of it when the spot is to the left, …
            box = Bbox.from_bounds(
                cx + gap * dx - width * (1 - dx) / 2, cy + gap * dy - height * (1 - dy) / 2, width, height
            )
            inside = area.contains(box.x0, box.y0) and area.contains(box.x1, box.y1)
            if inside and not _overlaps(box, taken):
                return box
    return box
