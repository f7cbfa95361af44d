"""Writing synthetic images as real MG DICOM files (pydicom 3, with a pydicom 2.4 fallback).

The files exercise what a mammography reader has to cope with: MONOCHROME1 and MONOCHROME2,
12/14/16 stored bits in 16 allocated, VOI windows or VOI LUT sequences or neither, Explicit VR
Little Endian or a lossless compressed syntax (RLE; and, with the encoders installed, JPEG 2000,
JPEG-LS, JPEG lossless SV1), ImagerPixelSpacing with or without PixelSpacing. Headers carry
fictitious patient identifiers that must never reach the CSV outputs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

__all__ = [
    "DIGITAL_MAMMO_PRESENTATION",
    "SECONDARY_CAPTURE",
    "MANUFACTURER",
    "DicomUIDs",
    "ImageEncoding",
    "TRANSFER_SYNTAXES",
    "PatientIdentity",
    "encode_pixels",
    "make_uid",
    "write_mammogram",
    "write_mask",
]

DIGITAL_MAMMO_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MANUFACTURER = "MammoCLIP-MONAI Synthetic"
_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "jpeg_lossless": JPEGLosslessSV1,
}
"""``ImageEncoding.transfer`` -> transfer syntax UID; every one is lossless. Encoders: pydicom's own
RLE encoder (the same bytes as before the compiled plugins were installed), pylibjpeg-openjpeg
(JPEG 2000), pyjpegls (JPEG-LS), GDCM (JPEG lossless, which no pydicom plugin encodes). HTJ2K
has no CPU encoder among the installed packages (OpenJPEG only decodes it), so it is not offered."""
_ENCODING_PLUGIN = {"rle": "pydicom", "jpeg2000": "pylibjpeg", "jpegls": "pyjpegls"}

_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}
_PATIENT_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}


@dataclass(frozen=True)
class PatientIdentity:
    """Fictitious identifiers written to the headers (never to CSV/JSON outputs)."""

    name: str  # e.g. "Doe^Jane^731904"
    patient_id: str  # e.g. "MRN-01234567"
    birth_date: str  # YYYYMMDD
    age: int
    accession: str  # e.g. "ACC012345678"
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS


@dataclass(frozen=True)
class DicomUIDs:
    study: str
    series: str
    sop: str


@dataclass(frozen=True)
class ImageEncoding:
    """How one image is stored."""

    bits_stored: int = 16
    photometric: str = "MONOCHROME2"  # or MONOCHROME1 (stored values inverted)
    transfer: str = "explicit"  # a key of TRANSFER_SYNTAXES:
                                # "explicit" | "rle" | "jpeg2000" | "jpegls" | "jpeg_lossless"
    voi: str = "none"  # "window" | "lut" | "none"
    window: tuple[float, float] = (0.0, 1.0)  # window bounds as fractions of the display range
    lut_gamma: float = 1.0
    pixel_spacing_tag: bool = False  # also write PixelSpacing (ImagerPixelSpacing always)


def make_uid(*parts: object) -> str:
    """Deterministic UID from the given parts (same parts -> same UID)."""
    return generate_uid(entropy_srcs=["mammoclip-monai-synthetic", *(str(p) for p in parts)])


def encode_pixels(image: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """Stored values: round(image * (2**bits - 1)), inverted for MONOCHROME1."""
    top = (1 << bits_stored) - 1
    stored = np.rint(np.clip(image, 0.0, 1.0).astype(np.float64) * top).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    return stored


def _base_dataset(
    sop_class: str,
    uids: DicomUIDs,
    identity: PatientIdentity,
    laterality: str,
    view: str,
    shape: tuple[int, int],
) -> Dataset:
    """Patient / study / series / image modules common to images and masks."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids.sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids.sop
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = identity.study_time
    ds.AccessionNumber = identity.accession
    ds.Modality = "MG"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "Phantom Renderer"
    ds.InstitutionName = "Synthetic Imaging Center"
    ds.ReferringPhysicianName = ""
    ds.PatientName = identity.name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = f"{identity.age:03d}Y"
    ds.StudyID = "1"
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    code = Dataset()
    code.CodeValue, code.CodeMeaning = _VIEW_CODES[view]
    code.CodingSchemeDesignator = "SCT"
    ds.ViewCodeSequence = Sequence([code])
    ds.PatientOrientation = _PATIENT_ORIENTATION[(laterality, view)]
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, bits_allocated: int, bits_stored: int) -> None:
    """Pixel module tags and native PixelData bytes (works on pydicom 2.4 and 3)."""
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    dtype = "<u2" if bits_allocated == 16 else "u1"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    ds["PixelData"].VR = "OW" if bits_allocated == 16 else "OB"


def _compress_rle(ds: Dataset, pixels: np.ndarray) -> None:
    """RLE Lossless with pydicom's native encoder, keeping the SOP Instance UID.

    The plugin is named: with GDCM installed pydicom would pick it first, and its RLE segments
    differ byte for byte from pydicom's (seeded datasets must not change with the install).
    """
    _compress(ds, pixels, "rle")


def _compress(ds: Dataset, pixels: np.ndarray, transfer: str) -> None:
    """Encode the native pixel data with the transfer syntax's lossless encoder."""
    if transfer == "jpeg_lossless":
        _compress_with_gdcm(ds, JPEGLosslessSV1)
    elif _PYDICOM3:
        ds.compress(TRANSFER_SYNTAXES[transfer], pixels, encoding_plugin=_ENCODING_PLUGIN[transfer],
                    generate_instance_uid=False)
    elif transfer == "rle":  # pragma: no cover - pydicom 2.4
        ds.compress(RLELossless, pixels)
    else:  # pragma: no cover - pydicom 2.4
        raise ValueError(f"transfer {transfer!r} needs pydicom >= 3 to encode")


def _compress_with_gdcm(ds: Dataset, syntax: str) -> None:
    """Encode with GDCM (python-gdcm): a pixel-only copy of the data set goes through a temporary
    file, and only its encapsulated pixel data come back, so the header stays pydicom's."""
    import gdcm

    names = {JPEGLosslessSV1: "JPEGLosslessProcess14_1"}
    pixel_only = Dataset()
    pixel_only.file_meta = FileMetaDataset()
    pixel_only.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    pixel_only.file_meta.MediaStorageSOPInstanceUID = pixel_only.SOPInstanceUID = make_uid("gdcm", ds.SOPInstanceUID)
    pixel_only.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixel_only.SOPClassUID = SECONDARY_CAPTURE
    pixel_only.Modality = "OT"  # GDCM aborts the process on a data set without a modality
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation", "PixelData"):
        setattr(pixel_only, keyword, getattr(ds, keyword))
    pixel_only["PixelData"].VR = ds["PixelData"].VR
    with tempfile.TemporaryDirectory(prefix="mammoclip-gdcm-") as tmp:
        source, target = str(Path(tmp) / "native.dcm"), str(Path(tmp) / "encoded.dcm")
        _save(pixel_only, Path(source))
        reader = gdcm.ImageReader()
        reader.SetFileName(source)
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, names[syntax])))
        if not reader.Read():
            raise RuntimeError("GDCM could not read the native pixel data")
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not encode {syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(target)
        if not writer.Write():
            raise RuntimeError("GDCM could not write the encoded pixel data")
        encoded = pydicom.dcmread(target)
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if _PYDICOM3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


def _set_voi(ds: Dataset, encoding: ImageEncoding) -> None:
    """Window (in stored values) or a VOI LUT with a mild gamma, or nothing."""
    top = (1 << encoding.bits_stored) - 1
    lo, hi = (float(v) * top for v in encoding.window)
    if encoding.photometric == "MONOCHROME1":
        lo, hi = top - hi, top - lo
    if encoding.voi == "window":
        ds.WindowCenter = f"{(lo + hi + 1.0) / 2.0:.1f}"
        ds.WindowWidth = f"{hi - lo + 1.0:.1f}"
        ds.WindowCenterWidthExplanation = "SYNTHETIC"
    elif encoding.voi == "lut":
        n = top + 1
        x = np.arange(n, dtype=np.float64) / top
        if encoding.photometric == "MONOCHROME1":  # gamma acts on the displayed (inverted) scale
            y = 1.0 - (1.0 - x) ** encoding.lut_gamma
        else:
            y = x**encoding.lut_gamma
        item = Dataset()
        item.add_new(0x00283002, "US", [n if n < 65536 else 0, 0, 16])  # LUTDescriptor
        item.LUTExplanation = f"GAMMA {encoding.lut_gamma:.2f}"
        item.add_new(0x00283006, "OW", np.rint(y * 65535).astype("<u2").tobytes())  # LUTData
        ds.VOILUTSequence = Sequence([item])


def write_mammogram(
    path: str | Path,
    image: np.ndarray,
    *,
    laterality: str,
    view: str,
    spacing_mm: float,
    identity: PatientIdentity,
    uids: DicomUIDs,
    encoding: ImageEncoding,
    series_number: int = 1,
    instance_number: int = 1,
) -> None:
    """Write a [0, 1] float image as Digital Mammography X-Ray Image - For Presentation."""
    ds = _base_dataset(DIGITAL_MAMMO_PRESENTATION, uids, identity, laterality, view, image.shape)
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SeriesDescription = f"{laterality} {view}"
    ds.BurnedInAnnotation = "YES"
    ds.DetectorType = "DIRECT"
    ds.PixelIntensityRelationship = "LOG"
    spacing = [f"{spacing_mm:.6g}", f"{spacing_mm:.6g}"]
    ds.ImagerPixelSpacing = spacing
    if encoding.pixel_spacing_tag:
        ds.PixelSpacing = spacing
    ds.PhotometricInterpretation = encoding.photometric
    ds.PresentationLUTShape = "INVERSE" if encoding.photometric == "MONOCHROME1" else "IDENTITY"
    _set_voi(ds, encoding)
    pixels = encode_pixels(image, encoding.bits_stored, encoding.photometric)
    _set_pixels(ds, pixels, 16, encoding.bits_stored)
    if encoding.transfer not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer {encoding.transfer!r}; expected one of {sorted(TRANSFER_SYNTAXES)}")
    if encoding.transfer != "explicit":
        _compress(ds, pixels, encoding.transfer)
    _save(ds, Path(path))


def write_mask(
    path: str | Path,
    mask: np.ndarray,
    *,
    laterality: str,
    view: str,
    spacing_mm: float,
    identity: PatientIdentity,
    uids: DicomUIDs,
    instance_number: int = 1,
) -> None:
    """Write a full-size 8-bit 0/255 MONOCHROME2 ROI mask (CBIS-DDSM style), RLE compressed."""
    ds = _base_dataset(SECONDARY_CAPTURE, uids, identity, laterality, view, mask.shape)
    ds.ImageType = ["DERIVED", "SECONDARY", ""]
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 100 + instance_number
    ds.InstanceNumber = instance_number
    ds.SeriesDescription = "ROI mask images"
    ds.ImagerPixelSpacing = [f"{spacing_mm:.6g}", f"{spacing_mm:.6g}"]
    ds.PhotometricInterpretation = "MONOCHROME2"
    pixels = np.where(mask, 255, 0).astype(np.uint8)
    _set_pixels(ds, pixels, 8, 8)
    _compress_rle(ds, pixels)
    _save(ds, Path(path))
