"""A memo in front of highdicom's ``is_attribute_in_iod``.

highdicom asks, for every SEG, SR and Secondary Capture it makes, whether attributes such as
ContentDate or NumberOfFrames belong to an IOD, and answers by walking every attribute of every
module of that IOD in its copy of the standard: about 2 ms a question, nine questions per image,
the largest cost of a job after the network. The answer depends only on the question and on those
tables, which highdicom loads once and never changes, so it is remembered here, per (attribute,
SOP class, excluded path elements).

Nothing happens on import: a process that makes result objects calls :func:`install` at its
start (``pneumonode worker``, ``pneumonode predict-dicom``), which puts the memo where
highdicom's modules call the lookup. Without it the objects are the same, only slower.

Upstream: highdicom 0.28.2 (the release we run) and its main branch (commit 4972873, 7 August
2026) still walk the tables on every call; ``highdicom._standard_utils`` caches only the tables
themselves (``lru_cache`` on ``get_iod_module_map`` and its neighbours). When a highdicom
release caches ``is_attribute_in_iod`` itself, :func:`install` does nothing (it sees the
function's ``cache_info``), a test says so, and this module can go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import highdicom.base
import highdicom.sr.content
from highdicom import _standard_utils

__all__ = ["install", "is_attribute_in_iod", "preload", "upstream_caches"]

_CALLERS: tuple[Any, ...] = (_standard_utils, highdicom.base, highdicom.sr.content)
_ORIGINAL: Callable[..., bool] = _standard_utils.is_attribute_in_iod


@lru_cache(maxsize=4096)
def _lookup(attribute: str, sop_class_uid: str, excluded: tuple[str, ...] | None) -> bool:
    return _ORIGINAL(attribute, sop_class_uid, excluded)


def is_attribute_in_iod(
    attribute: str,
    sop_class_uid: str,
    exclude_path_elements: Sequence[str] | None = None,
) -> bool:
    """highdicom's answer, remembered (same arguments, same result)."""
    excluded = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _lookup(str(attribute), str(sop_class_uid), excluded)


def preload() -> None:
    """Load highdicom's copy of the standard now (its first lookup parses 22 MB of JSON into
    about 300,000 objects), not during the first image: a worker does this before it takes
    jobs."""
    is_attribute_in_iod("ContentDate", "1.2.840.10008.5.1.4.1.1.66.4")  # Segmentation


def upstream_caches() -> bool:
    """Whether highdicom's own ``is_attribute_in_iod`` already remembers its answers."""
    return hasattr(_ORIGINAL, "cache_info")


def install() -> None:
    """Put the memo in place of the original wherever highdicom calls it (idempotent; nothing
    to do where highdicom caches the lookup itself). Call it once at the start of a process
    that makes result objects."""
    if upstream_caches():
        return
    for module in _CALLERS:
        if getattr(module, "is_attribute_in_iod", None) is _ORIGINAL:
            module.is_attribute_in_iod = is_attribute_in_iod
