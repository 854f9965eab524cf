"""The report of a data set inspection: the summary lines, ``inspection.json``,
``inspection_images.csv`` (one row per name) and the PNG plots (histograms, example and problem
grids)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pneumonode.conversion.png import encode_png
from pneumonode.model.inspect.analysis import DatasetInspection, NameRecord
from pneumonode.results import render_overlay

__all__ = ["render_bar_chart", "render_grid", "summary_lines", "write_inspection_report"]

EXAMPLES = 16
PROBLEM_TILES = 24
TILE = 256


def summary_lines(inspection: DatasetInspection) -> list[str]:
    """A short human summary (what ``pneumonode inspect-dataset`` prints)."""
    report = inspection.to_json()
    counts = report["counts"]
    balance = report["class_balance"]
    masks = report["masks"]
    share = balance["positive_share"]
    out = [
        f"data set:             {inspection.layout.root} ({inspection.layout.name})",
        f"images / masks:       {counts['image_files']} / {counts['mask_files']} "
        f"({counts['pairs']} pairs)",
        f"images without mask:  {counts['images_without_mask']} (unlabeled)",
        f"masks without image:  {counts['masks_without_image']}",
        f"unreadable files:     {counts['unreadable_images'] + counts['unreadable_masks']}",
        "image sizes (HxW):    "
        + (", ".join(f"{k} ({v})" for k, v in report["image_sizes_hxw"].items()) or "-"),
        f"blank images:         {len(report['blank_images'])}",
        f"masks:                {balance['positive']} positive, {balance['negative']} empty, "
        f"{len(masks['non_binary'])} non-binary; positive share "
        + (f"{100 * share:.1f}%" if share is not None else "-"),
    ]
    area = report["lesion_area"]["pixels"]
    if area:
        out.append(
            f"lesion area (px):     min {area['min']:,.0f}, median {area['median']:,.0f}, "
            f"p90 {area['p90']:,.0f}, max {area['max']:,.0f}"
        )
    comps = {k: v for k, v in report["components_per_mask"].items() if k != "0"}
    if comps:
        out.append("components per mask:  " + ", ".join(f"{k}: {v}" for k, v in comps.items()))
    for key, label in (
        ("brightness_mean", "brightness (mean):   "),
        ("contrast_std", "contrast (std):      "),
        ("noise_sigma", "noise (sigma):       "),
    ):
        d = report["intensity"][key]
        if d:
            out.append(f"{label} median {d['median']:.1f} (p10 {d['p10']:.1f}, p90 {d['p90']:.1f})")
    dup = report["duplicates"]
    out.append(
        f"duplicates:           {len(dup['exact_groups'])} exact group(s), "
        f"{len(dup['near_pairs'])} near pair(s) (dHash <= {inspection.near_distance}/256)"
    )
    if report["patients"]:
        p = report["patients"]
        out.append(
            f"patients:             {p['patients']} ({p['patients_with_a_positive']} with a "
            "positive)"
        )
    out += [f"warning: {w}" for w in report["warnings"]]
    out += [f"problem: {p}" for p in report["problems"]]
    return out


# ------------------------------------------------------------------ pictures

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_AXIS = (60, 60, 60)
_BAR = (70, 130, 180)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(
    image: np.ndarray,
    text: str,
    x: int,
    y: int,
    *,
    scale: float = 0.45,
    colour: tuple[int, int, int] = _BLACK,
    align: str = "left",
) -> None:
    """Draw ``text`` with its baseline at ``y``; ``align`` says where ``x`` is."""
    (width, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    if align == "center":
        x -= width // 2
    elif align == "right":
        x -= width
    cv2.putText(image, text, (int(x), int(y)), _FONT, scale, colour, 1, cv2.LINE_AA)


def _short(value: float) -> str:
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def render_bar_chart(
    counts: Sequence[int],
    labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "images",
    size: tuple[int, int] = (800, 450),
) -> np.ndarray:
    """A bar chart with axes: one bar per count.

    ``labels`` name the bin edges (``len(counts) + 1``) or the bins (``len(counts)``).
    Shape: -> (height, width, 3) uint8 RGB, ``size`` is (width, height).
    """
    if len(labels) not in (len(counts), len(counts) + 1):
        raise ValueError(f"{len(labels)} labels for {len(counts)} bars")
    width, height = size
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 75, 25, 45, 65
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([*counts, 1])
    step = max(1, math.ceil(peak / 4))
    axis_max = step * math.ceil(peak / step)
    bar_w = plot_w / max(1, len(counts))
    base = top + plot_h
    for i, count in enumerate(counts):
        if count:
            x0, x1 = left + round(i * bar_w) + 1, left + round((i + 1) * bar_w) - 1
            cv2.rectangle(
                image, (x0, base - round(plot_h * count / axis_max)), (max(x0, x1), base), _BAR, -1
            )
    cv2.line(image, (left, top), (left, base), _AXIS, 1)
    cv2.line(image, (left, base), (left + plot_w, base), _AXIS, 1)
    for tick in range(0, axis_max + 1, step):
        y = base - round(plot_h * tick / axis_max)
        cv2.line(image, (left - 4, y), (left, y), _AXIS, 1)
        _text(image, f"{tick:,}", left - 7, y + 5, align="right")
    at_edges = len(labels) == len(counts) + 1
    every = max(1, math.ceil(len(labels) / 10))
    for i in range(0, len(labels), every):
        x = left + round((i if at_edges else i + 0.5) * bar_w)
        cv2.line(image, (x, base), (x, base + 4), _AXIS, 1)
        _text(image, labels[i], x, base + 20, align="center")
    _text(image, title, width // 2, 28, scale=0.6, align="center")
    _text(image, xlabel, left + plot_w // 2, height - 15, scale=0.5, align="center")
    (text_w, text_h), baseline = cv2.getTextSize(ylabel, _FONT, 0.5, 1)
    flat = np.full((text_h + baseline + 4, text_w + 4, 3), 255, np.uint8)
    _text(flat, ylabel, 2, text_h + 2, scale=0.5)
    upright = cv2.rotate(flat, cv2.ROTATE_90_COUNTERCLOCKWISE)[:plot_h, :]
    y0 = top + (plot_h - upright.shape[0]) // 2
    image[y0 : y0 + upright.shape[0], 8 : 8 + upright.shape[1]] = upright
    return image


def _tile(grey: np.ndarray | None, foreground: np.ndarray | None, side: int) -> np.ndarray:
    """The image letterboxed into a side x side RGB tile, the mask drawn over it when given."""
    tile = np.full((side, side, 3), 40, np.uint8)
    if grey is None:
        return tile
    height, width = grey.shape
    scale = side / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    small = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
    if foreground is not None and foreground.shape == grey.shape:
        # INTER_AREA then > 0 keeps lesions smaller than a tile pixel visible
        shrunk = cv2.resize(foreground.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA)
        rgb = render_overlay(small, shrunk > 0)
    else:
        rgb = np.repeat(small[..., np.newaxis], 3, axis=2)
    y, x = (side - h) // 2, (side - w) // 2
    tile[y : y + h, x : x + w] = rgb
    return tile


def render_grid(
    tiles: Sequence[tuple[np.ndarray, Sequence[str]]], *, columns: int = 4, caption_lines: int = 2
) -> np.ndarray:
    """Square RGB tiles side by side, each with caption lines underneath.

    Shape: tiles (S, S, 3) uint8 -> (rows * (S + caption), columns * S, 3) uint8 RGB.
    """
    if not tiles:
        raise ValueError("no tiles to draw")
    side = tiles[0][0].shape[0]
    caption = 16 * caption_lines + 4
    rows = math.ceil(len(tiles) / columns)
    grid = np.zeros((rows * (side + caption), columns * side, 3), np.uint8)
    for k, (tile, lines) in enumerate(tiles):
        y, x = (k // columns) * (side + caption), (k % columns) * side
        grid[y : y + side, x : x + side] = tile
        for n, line in enumerate(lines[:caption_lines]):
            _text(grid, line, x + 4, y + side + 15 + 16 * n, scale=0.4, colour=_WHITE)
        cv2.rectangle(grid, (x, y), (x + side - 1, y + side + caption - 1), (90, 90, 90), 1)
    return grid


def _short_name(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else ".." + name[-(limit - 2) :]


def _load(root: Path, record: NameRecord) -> tuple[np.ndarray | None, np.ndarray | None]:
    grey = mask = None
    if record.image_file and record.image:
        grey = cv2.imread(str(root / record.image_file), cv2.IMREAD_GRAYSCALE)
    if record.mask_file and record.mask:
        raw = cv2.imread(str(root / record.mask_file), cv2.IMREAD_UNCHANGED)
        if raw is not None:
            if raw.ndim == 3:
                raw = raw[..., :3].max(axis=2)
            mask = raw > int(raw.max()) // 2
    return grey, mask


def _example_tiles(inspection: DatasetInspection) -> list[tuple[np.ndarray, list[str]]]:
    """Up to EXAMPLES labelled pairs: positives from the smallest to the largest lesion."""
    positives = sorted(
        (r for r in inspection.labelled() if r.label == "positive" and r.image and r.mask),
        key=lambda r: (r.mask.area if r.mask else 0, r.name),
    )
    picks = sorted({round(i * (len(positives) - 1) / (EXAMPLES - 1)) for i in range(EXAMPLES)})
    chosen = [positives[i] for i in picks if i < len(positives)]
    names = {r.name for r in chosen}
    chosen += [r for r in inspection.records if r.image and r.name not in names][
        : EXAMPLES - len(chosen)
    ]
    tiles = []
    for record in chosen:
        grey, mask = _load(inspection.layout.root, record)
        detail = record.label
        if record.mask and record.mask.area:
            detail = f"{record.mask.area:,} px, {len(record.mask.component_areas)} comp."
        tiles.append((_tile(grey, mask, TILE), [_short_name(record.name), detail]))
    return tiles


def _problem_tiles(inspection: DatasetInspection) -> list[tuple[np.ndarray, list[str]]]:
    by_name = {r.name: r for r in inspection.records}
    flagged: list[tuple[NameRecord, str]] = []
    for r in inspection.records:
        if r.image_error or r.mask_error:
            flagged.append((r, f"unreadable: {r.image_error or r.mask_error}"))
    flagged += [
        (r, f"non-binary mask, values {list(r.mask.values)[:4]}")
        for r in inspection.non_binary_masks()
        if r.mask
    ]
    flagged += [(r, "mask size differs") for r in inspection.size_mismatches()]
    flagged += [(r, f"blank, std {r.image.std:.1f}") for r in inspection.blank_images() if r.image]
    flagged += [(by_name[n], "mask without image") for n in inspection.masks_without_image()]
    for group in inspection.exact_duplicates:
        flagged += [(by_name[n], f"exact duplicate ({len(group)})") for n in group[:2]]
    for a, b, distance in inspection.near_duplicates:
        flagged += [(by_name[n], f"near duplicate, distance {distance}") for n in (a, b)]
    tiles = []
    for record, issue in flagged[:PROBLEM_TILES]:
        grey, mask = _load(inspection.layout.root, record)
        if grey is None and mask is not None:
            grey, mask = mask.astype(np.uint8) * 255, None  # show the mask itself
        tiles.append((_tile(grey, mask, TILE), [_short_name(record.name), issue[:40]]))
    return tiles


def _write_csv(inspection: DatasetInspection, path: Path) -> None:
    columns = (
        "name", "label", "image_file", "mask_file", "image_error", "mask_error", "height",
        "width", "mean", "std", "p1", "p99", "noise", "blank", "mask_values", "mask_area",
        "components", "pixel_hash", "dhash",
    )  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in inspection.records:
        row: dict[str, Any] = {
            "name": r.name,
            "label": r.label,
            "image_file": r.image_file,
            "mask_file": r.mask_file,
            "image_error": r.image_error,
            "mask_error": r.mask_error,
        }
        if r.image:
            row.update(
                height=r.image.height, width=r.image.width, mean=r.image.mean, std=r.image.std,
                p1=r.image.p1, p99=r.image.p99, noise=r.image.noise,
                blank=int(r.image.std < inspection.blank_std),
                pixel_hash=r.image.pixel_hash, dhash=r.image.dhash,
            )  # fmt: skip
        if r.mask:
            row.update(
                mask_values="/".join(map(str, r.mask.values)),
                mask_area=r.mask.area,
                components=len(r.mask.component_areas),
            )
        writer.writerow(row)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def write_inspection_report(inspection: DatasetInspection, out: Path) -> list[Path]:
    """Write ``inspection.json``, ``inspection_images.csv`` and the PNG plots into ``out``.

    Returns the files written, the JSON first.
    """
    out.mkdir(parents=True, exist_ok=True)
    report = inspection.to_json()
    plots: dict[str, np.ndarray] = {}
    lesion = report["lesion_area"]
    if "histogram" in lesion:
        histogram = lesion["histogram"]
        plots["lesion_area_hist.png"] = render_bar_chart(
            histogram["counts"],
            [_short(e) for e in histogram["edges"]],
            title=f"Lesion area per positive mask (n={lesion['pixels']['count']})",
            xlabel="foreground pixels (log scale)",
            ylabel="masks",
        )
    components = {int(k): v for k, v in report["components_per_mask"].items()}
    if components:
        top = max(components)
        plots["components_per_mask_hist.png"] = render_bar_chart(
            [components.get(k, 0) for k in range(top + 1)],
            [str(k) for k in range(top + 1)],
            title="Connected components (8-connected) per mask; 0 = empty",
            xlabel="components",
            ylabel="masks",
        )
    stats = [r.image for r in inspection.records if r.image is not None]
    if stats:
        for filename, values, title, edges in (
            ("brightness_hist.png", [s.mean for s in stats], "Brightness: mean grey level",
             np.arange(0, 257, 8)),
            ("contrast_hist.png", [s.std for s in stats], "Contrast: grey-level std",
             np.arange(0, 129, 4)),
            ("noise_hist.png", [s.noise for s in stats], "Noise: estimated sigma (Immerkaer)",
             np.linspace(0, max(1.0, max(s.noise for s in stats) * 1.05), 31)),
        ):  # fmt: skip
            counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
            plots[filename] = render_bar_chart(
                [int(c) for c in counts],
                [_short(float(e)) for e in edges],
                title=f"{title} (n={len(values)})",
                xlabel="grey levels",
            )
    if examples := _example_tiles(inspection):
        plots["examples_grid.png"] = render_grid(examples)
    if problems := _problem_tiles(inspection):
        plots["problems_grid.png"] = render_grid(problems)

    written = [out / "inspection.json", out / "inspection_images.csv"]
    for filename, picture in plots.items():
        (out / filename).write_bytes(encode_png(picture))
        written.append(out / filename)
    report["files"] = {"per_image_csv": written[1].name, "plots": sorted(plots)}
    _write_csv(inspection, written[1])
    written[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return written
