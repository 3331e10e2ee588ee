"""A matplotlib `Figure` that Jupyter displays as an image, with no pyplot and no `%matplotlib`.

A `Figure` built without pyplot (so that plotting changes no global state) has no rich
representation of its own: IPython only learns to draw figures once pyplot's inline backend is
activated, so a fresh kernel would print `<Figure size 700x... with 3 Axes>`. `NotebookFigure`
adds `_repr_png_`, the hook IPython's display system calls for any object.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

__all__ = ["NotebookFigure"]


class NotebookFigure(Figure):
    """A `matplotlib.figure.Figure` that renders itself as PNG in Jupyter (`_repr_png_`).

    Everything else is matplotlib's: `savefig`, `get_axes`, `set_size_inches`, ...
    """

    def _repr_png_(self) -> bytes:
        """The figure as PNG bytes at the figure's own dpi, cropped to its content."""
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
