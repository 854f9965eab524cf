"""Inspect a segmentation data set before training: the seed notebook's analysis as a report.

A data set folder holds images and masks with the same file stem, in one of two layouts::

    DIR/png_images/<name>.png + DIR/png_masks/<name>.png   (``convert-siim``, vbookshelf)
    DIR/images/<name>.jpg|png + DIR/masks/<name>.png         (``siim-positives``)

and optionally ``DIR/index.csv`` (``ImageId``, and ``PatientID``, ``mask_pixels``, ``status`` when
present). An image without a mask is *unlabeled*; an empty mask is a *negative*.

``inspect_dataset`` reads every file once (in parallel with ``workers``) and returns a
``DatasetInspection``: unreadable files, missing pairs, image sizes, blank images, empty and
non-binary masks, class balance, lesion areas and connected components, brightness / contrast /
noise, exact and near duplicates, patients. ``write_inspection_report`` writes it as
``inspection.json``, ``inspection_images.csv`` (one row per name) and PNG plots.

Problems (the data set cannot be used as is): unreadable files, non-binary masks, masks without
an image, images without a mask that ``index.csv`` does not declare unlabeled, masks whose size
differs from their image, two files with the same stem. Everything else is a warning.

:mod:`~pneumonode.model.inspect.analysis` is the analysis, :mod:`~pneumonode.model.inspect.report`
the report and its plots.
"""

from pneumonode.model.inspect.analysis import (
    BLANK_STD,
    LAYOUTS,
    NEAR_DUPLICATE_DISTANCE,
    DatasetInspection,
    DatasetLayout,
    DatasetLayoutError,
    ImageStats,
    MaskStats,
    NameRecord,
    difference_hash,
    inspect_dataset,
    inspect_image,
    inspect_mask,
    noise_sigma,
)
from pneumonode.model.inspect.report import (
    render_bar_chart,
    render_grid,
    summary_lines,
    write_inspection_report,
)

__all__ = [
    "BLANK_STD",
    "LAYOUTS",
    "NEAR_DUPLICATE_DISTANCE",
    "DatasetInspection",
    "DatasetLayout",
    "DatasetLayoutError",
    "ImageStats",
    "MaskStats",
    "NameRecord",
    "difference_hash",
    "inspect_dataset",
    "inspect_image",
    "inspect_mask",
    "noise_sigma",
    "render_bar_chart",
    "render_grid",
    "summary_lines",
    "write_inspection_report",
]
