"""pneumonode: a DICOM node that finds pneumothorax on chest radiographs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pneumonode")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
