"""PNG figures (matplotlib, Agg backend): heatmaps, grouped bars, scatter plots with a fit.

Every function takes plain lists/dicts (None or NaN = missing) and writes one PNG file.
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

DPI = 110


def _nan(values):
  return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _save(fig, path):
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  plt.close(fig)


def heatmap(path, title, row_labels, col_labels, values, vmax=100.0, label="score"):
  """values[row][col] (None = missing, drawn blank); cells are annotated with the value."""
  data = np.array([_nan(row) for row in values], dtype=np.float64).reshape(
      len(row_labels), len(col_labels)
  )
  width = max(6.0, 0.34 * len(col_labels) + 2.5)
  height = max(2.5, 0.45 * len(row_labels) + 1.5)
  fig, ax = plt.subplots(figsize=(width, height))
  image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
  ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize=8)
  ax.set_yticks(range(len(row_labels)), row_labels, fontsize=9)
  for i in range(data.shape[0]):
    for j in range(data.shape[1]):
      if not math.isnan(data[i, j]):
        ax.text(
            j,
            i,
            f"{data[i, j]:.0f}",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if data[i, j] < 0.6 * vmax else "black",
        )
  fig.colorbar(image, ax=ax, label=label, fraction=0.03, pad=0.01)
  ax.set_title(title, fontsize=10)
  _save(fig, path)


def bar_panels(path, title, panels, ylabel, ncols=1):
  """Grouped bars. panels: [(subtitle, categories, {series: [value per category]})]."""
  nrows = math.ceil(len(panels) / ncols)
  bars = max(len(categories) * max(1, len(series)) for _, categories, series in panels)
  width = min(24.0, max(5.0, 0.09 * bars + 2.5)) * ncols
  fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.2 * nrows), squeeze=False)
  for ax, (subtitle, categories, series) in zip(axes.flat, panels):
    x = np.arange(len(categories))
    step = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
      ax.bar(x - 0.4 + step * (k + 0.5), _nan(values), width=step, label=name)
    ax.set_xticks(x, categories, rotation=90 if len(categories) > 8 else 0, fontsize=8)
    ax.set_xlim(-0.6, len(categories) - 0.4)
    top = np.nanmax(
        [np.nanmax(_nan(v)) if any(x is not None for x in v) else np.nan for v in series.values()]
        + [0.0]
    )
    if top > 0:
      ax.set_ylim(0, top * 1.35)  # room for the legend
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(subtitle, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(4, len(series)), loc="upper right")
  for ax in list(axes.flat)[len(panels) :]:
    ax.set_visible(False)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  _save(fig, path)


def fit_line(xs, ys):
  """(slope, intercept) of the least-squares line, or None with < 2 distinct x."""
  xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
  if len(xs) < 2 or np.ptp(xs) == 0:
    return None
  slope, intercept = np.polyfit(xs, ys, 1)
  return float(slope), float(intercept)


def scatter_panels(path, title, panels, ncols, ylabel):
  """Scatter plots with a fitted line per series; the first series' points are labelled.

  panels: [(subtitle, xlabel, {series: (xs, ys, point_labels)})].
  """
  nrows = math.ceil(len(panels) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  handles = {}
  for ax, (subtitle, xlabel, series) in zip(axes.flat, panels):
    for k, (name, (xs, ys, labels)) in enumerate(series.items()):
      color = colors[k % len(colors)]
      handles[name] = ax.scatter(xs, ys, s=10, color=color, alpha=0.8)
      if k == 0:
        for x, y, text in zip(xs, ys, labels):
          ax.annotate(
              text, (x, y), fontsize=5, alpha=0.7, xytext=(2, 2), textcoords="offset points"
          )
      line = fit_line(xs, ys)
      if line is not None:
        grid = np.linspace(min(xs), max(xs), 20)
        ax.plot(grid, line[0] * grid + line[1], color=color, linewidth=1)
    ax.set_title(subtitle, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels) :]:
    ax.set_visible(False)
  height = 3.4 * nrows
  if handles:
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="upper right",
        fontsize=8,
        ncols=len(handles),
        bbox_to_anchor=(0.99, 1 - 0.05 / height),
    )
  fig.suptitle(title, fontsize=11, x=0.02, y=1 - 0.12 / height, ha="left", va="top")
  fig.subplots_adjust(
      left=0.05, right=0.99, bottom=0.6 / height, top=1 - 0.75 / height, hspace=0.45, wspace=0.25
  )
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
