"""Pixels: from any chest radiograph DICOM to the model's input and back; the SIIM dataset codec."""

from pneumonode.conversion.decode import (
    DECODER_PREFERENCE,
    DecodedImage,
    decode_stored_pixels,
    decoder_table,
    read_dataset,
)
from pneumonode.conversion.errors import (
    ConversionError,
    MissingPixelDataError,
    NotDicomError,
    PixelDecodeError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from pneumonode.conversion.geometry import Letterbox
from pneumonode.conversion.png import encode_png
from pneumonode.conversion.prepare import PreparedImage, prepare_radiograph
from pneumonode.conversion.rle import (
    RleError,
    decode_siim_rle,
    encode_siim_rle,
    read_siim_rle_csv,
    union_mask,
)
from pneumonode.conversion.window import DisplayLUT, build_display_lut

__all__ = [
    "DECODER_PREFERENCE",
    "ConversionError",
    "DecodedImage",
    "DisplayLUT",
    "Letterbox",
    "MissingPixelDataError",
    "NotDicomError",
    "PixelDecodeError",
    "PreparedImage",
    "RleError",
    "UnsupportedImageError",
    "UnsupportedTransferSyntaxError",
    "build_display_lut",
    "decode_siim_rle",
    "decode_stored_pixels",
    "decoder_table",
    "encode_png",
    "encode_siim_rle",
    "prepare_radiograph",
    "read_dataset",
    "read_siim_rle_csv",
    "union_mask",
]
