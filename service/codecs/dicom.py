"""DICOM Part 10 bytes -> the service's RGB pixels, plus the UIDs to echo. No FastAPI, no HTTP.

What is accepted (everything else is refused with a :class:`DicomDecodeError` whose ``reason`` is
one of the ``REASON_*`` constants below; the error is an :class:`ImageDecodeError`, so the
service's error table answers it with 422 for that image):

- SOP classes: VL Photographic Image Storage, Dermoscopic Photography Image Storage, Secondary
  Capture Image Storage and Multi-frame True Color Secondary Capture (one frame only). Secondary
  Capture objects whose Modality names a radiology/RT/report modality (CT, MR, US, ...) are refused.
- Colour only: Photometric Interpretation RGB, YBR_FULL, YBR_FULL_422 (and YBR_ICT / YBR_RCT inside
  JPEG 2000), 3 samples per pixel, unsigned 8-bit (16-bit is scaled to 8-bit by Bits Stored).
  MONOCHROME1/2 and PALETTE COLOR are refused (``dicom_not_colour``).
- Transfer syntaxes: Implicit/Explicit VR Little Endian, Explicit VR Big Endian, Deflated Explicit
  VR Little Endian, JPEG Baseline (Process 1), JPEG Extended (Process 2 & 4), JPEG Lossless
  (Process 14, and its Selection Value 1 variant),
  JPEG-LS lossless and near-lossless, JPEG 2000 (lossless and lossy), RLE Lossless. Anything else
  (MPEG, HTJ2K, JPIP, private syntaxes, ...) is ``dicom_unsupported_transfer_syntax``.
- One frame: objects with Number of Frames > 1 are refused (``dicom_multiframe``), never answered
  frame by frame, so one DICOM object is always one prediction.

**Same decoder as the JPEG path.** For JPEG Baseline / 8-bit Extended objects whose frame is an
ordinary YCbCr JPEG (what dcmtk's ``img2dcm`` writes: Photometric YBR_FULL_422), the encapsulated
JPEG frame is extracted and decoded by :func:`service.preprocessing.decode_image` itself, i.e. by
the same Pillow/libjpeg-turbo call as an uploaded JPEG, so a wrapped JPEG gives bit-identical
pixels. (pydicom's own JPEG path converts YCbCr with its own arithmetic and differs by up to 3
grey levels.) Other encodings are decoded by pydicom's pixel pipeline (``pydicom.pixels``, with
the pylibjpeg plug-ins for JPEG-LS / JPEG 2000 / lossless JPEG) and converted to RGB there.

**Patient data.** :class:`DicomRefs` keeps the PatientID (and its issuer) only for the FHIR
subject; both are hidden from ``repr``. No exception message built here contains any value read
from the file other than standard dictionary names (SOP class, transfer syntax), enumerated
attributes (Photometric Interpretation, Modality) and numbers (Rows, Columns, bits), and pydicom's
own exception texts are never passed on (they can quote element values). pydicom's logger is
detached from the root logger and its warnings are silenced for the same reason (see
:func:`_silence_pydicom`).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pydicom
import pydicom.config
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID

from service.preprocessing import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    PreprocessSpec,
    decode_image,
    resize_to_array,
)

# --------------------------------------------------------------------------------------------
# reasons (machine-readable, in ImageError.reason)
# --------------------------------------------------------------------------------------------
REASON_INVALID = "dicom_invalid"  # not parseable / corrupt / truncated / inconsistent header
REASON_NO_PIXEL_DATA = "dicom_no_pixel_data"  # e.g. a structured report, a plan, a key object
REASON_UNSUPPORTED_MODALITY = "dicom_unsupported_modality"  # CT/MR/RT/... SOP class or SC modality
REASON_UNSUPPORTED_TRANSFER_SYNTAX = "dicom_unsupported_transfer_syntax"
REASON_NOT_COLOUR = "dicom_not_colour"  # MONOCHROME1/2, PALETTE COLOR, 1 sample per pixel
REASON_UNSUPPORTED_PIXEL_FORMAT = "dicom_unsupported_pixel_format"  # YBR_PARTIAL_*, signed, 32-bit
REASON_MULTIFRAME = "dicom_multiframe"
#: Shared with ordinary images (same meaning): ``too_many_pixels``, ``too_small``, ``bad_aspect_ratio``.

#: Every reason this module can raise (for documentation and tests).
DICOM_REASONS: tuple[str, ...] = (
    REASON_INVALID, REASON_NO_PIXEL_DATA, REASON_UNSUPPORTED_MODALITY, REASON_UNSUPPORTED_TRANSFER_SYNTAX,
    REASON_NOT_COLOUR, REASON_UNSUPPORTED_PIXEL_FORMAT, REASON_MULTIFRAME,
    "empty", "too_many_pixels", "too_small", "bad_aspect_ratio",
)

#: DICOM Part 10 media files start with a 128-byte preamble followed by these 4 bytes (PS3.10 7.1).
DICM_MARKER = b"DICM"
DICM_OFFSET = 128

# --------------------------------------------------------------------------------------------
# what is accepted (UIDs from PS3.6 Annex A; names as in pydicom's UID dictionary)
# --------------------------------------------------------------------------------------------
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"

#: SOP classes that can hold a colour photograph of skin.
PHOTOGRAPHIC_SOP_CLASSES: frozenset[str] = frozenset(
    {VL_PHOTOGRAPHIC, DERMOSCOPIC_PHOTOGRAPHY, SECONDARY_CAPTURE, MULTIFRAME_TRUE_COLOR_SC}
)
_SECONDARY_CAPTURE_CLASSES = frozenset({SECONDARY_CAPTURE, MULTIFRAME_TRUE_COLOR_SC})

#: Modality values (PS3.3 C.7.3.1.1.1 defined terms) that make a Secondary Capture object a
#: rendering of a non-photographic study (a CT screenshot, a dose map, a scanned report ...).
NON_PHOTOGRAPHIC_MODALITIES: frozenset[str] = frozenset({
    "CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "IO", "PX", "RG", "DG", "OCT", "OPT",
    "IVUS", "IVOCT", "BMD", "RTIMAGE", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTION", "SEG",
    "SR", "DOC", "KO", "PR", "ECG", "EEG", "EMG", "EPS", "HD", "AU", "LS", "RWV", "SMR", "M3D", "REG",
})

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_DEFLATED_LE = "1.2.840.10008.1.2.1.99"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
_JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
_JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
_JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
_JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
_JPEG_2000 = "1.2.840.10008.1.2.4.91"
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"

_NATIVE_SYNTAXES = frozenset({_IMPLICIT_LE, _EXPLICIT_LE, _DEFLATED_LE, _EXPLICIT_BE})
#: JPEG syntaxes whose 8-bit frames are decoded by the service's own JPEG path (Pillow).
_PILLOW_JPEG_SYNTAXES = frozenset({_JPEG_BASELINE, _JPEG_EXTENDED})
#: Transfer syntaxes this module decodes (each has a test on a real file).
SUPPORTED_TRANSFER_SYNTAXES: frozenset[str] = _NATIVE_SYNTAXES | frozenset({
    _JPEG_BASELINE, _JPEG_EXTENDED, _JPEG_LOSSLESS, _JPEG_LOSSLESS_SV1, _JPEG_LS_LOSSLESS, _JPEG_LS_NEAR_LOSSLESS,
    _JPEG_2000_LOSSLESS, _JPEG_2000, _RLE_LOSSLESS,
})

_COLOUR_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
_JPEG_2000_ONLY_PHOTOMETRICS = frozenset({"YBR_ICT", "YBR_RCT"})
_GREY_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2"})

#: A DICOM UID as echoed to callers: digits and dots only, at most 64 characters (PS3.5 9.1).
#: Leading zeros inside a component (common in old devices) are tolerated here.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _silence_pydicom() -> None:
    """Keep pydicom's diagnostics out of the service's logs: they may quote element values.

    pydicom logs through the ``pydicom`` logger *and* ``warnings.warn`` (``misc.warn_and_log``),
    e.g. "Invalid value for VR UI: '...'". Three process-wide settings, made once at import
    (``warnings.catch_warnings`` is not thread-safe, and decoding runs in a thread pool):
    pydicom's reading validation is switched off (``IGNORE``: the only warnings that quote
    values are validation warnings), its logger is detached from the root logger (a
    ``NullHandler`` stays attached), and warnings raised from pydicom's modules are ignored
    (a filter that a later ``catch_warnings`` block, e.g. pytest's, may drop; the first two
    settings do not depend on it). Nothing else in the service uses pydicom.
    """
    # Validation warnings on reading are the ones that quote values ("Invalid value for VR UI:
    # '...'"): switch reading validation off (this module only reads).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.propagate = False
    if not pydicom_log.handlers:
        pydicom_log.addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", module=re.escape(__name__) + "$")


_silence_pydicom()


# --------------------------------------------------------------------------------------------
# public types
# --------------------------------------------------------------------------------------------
class DicomDecodeError(ImageDecodeError):
    """A DICOM object that cannot be a colour photograph for the model (422 per image).

    Attributes:
        reason: one of :data:`DICOM_REASONS` (``dicom_*`` or the shared image reasons).
        detail: a sentence free of patient data.
        uids: ``study_instance_uid`` / ``series_instance_uid`` / ``sop_instance_uid`` when the
            header could be read (else empty), so the caller can say *which* object was refused.
    """

    def __init__(self, reason: str, detail: str, uids: dict[str, str | None] | None = None) -> None:
        super().__init__(reason, detail)
        self.uids: dict[str, str | None] = dict(uids or {})


@dataclass(frozen=True)
class DicomRefs:
    """Identifiers read from one DICOM object.

    The three UIDs are echoed with the prediction and used in FHIR. ``patient_id`` and
    ``patient_id_issuer`` (PatientID (0010,0020), IssuerOfPatientID (0010,0021)) are kept only
    to name the FHIR ``subject``: they are excluded from ``repr``/``str`` and must never be
    logged, put into metrics or error messages, or echoed in the JSON answer. No other patient
    attribute (name, birth date, ...) is read at all.
    """

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    patient_id: str | None = field(default=None, repr=False, compare=False)
    patient_id_issuer: str | None = field(default=None, repr=False, compare=False)

    def uids(self) -> dict[str, str | None]:
        """The three UIDs to echo with a prediction (keys as in the JSON answer)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
        }


@dataclass(frozen=True)
class DecodedDicom:
    """Pixels and identifiers of one single-frame colour DICOM object.

    Attributes:
        pixels: ``uint8`` array ``(Rows, Columns, 3)``, RGB, C-contiguous (not resized).
        refs: identifiers (see :class:`DicomRefs`).
        transfer_syntax_uid: the object's transfer syntax.
        photometric_interpretation: as stored in the object (before conversion to RGB).
        decoder: ``"pillow-jpeg"`` (the service's own JPEG decode of the encapsulated frame) or
            ``"pydicom"`` (pydicom's pixel pipeline).
    """

    pixels: np.ndarray = field(repr=False)
    refs: DicomRefs
    transfer_syntax_uid: str
    photometric_interpretation: str
    decoder: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------
def is_dicom(data: bytes) -> bool:
    """True if ``data`` is a DICOM Part 10 file: ``DICM`` at byte 128 (after the preamble)."""
    return len(data) >= DICM_OFFSET + 4 and data[DICM_OFFSET:DICM_OFFSET + 4] == DICM_MARKER


def decode_dicom(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedDicom:
    """Decode one single-frame colour DICOM object to full-resolution RGB pixels.

    Args:
        data: a DICOM Part 10 file (preamble + ``DICM`` + file meta + data set).
        max_pixels: refuse objects whose Rows x Columns exceed this, before decoding.

    Returns:
        :class:`DecodedDicom` with ``uint8 (Rows, Columns, 3)`` RGB pixels and the identifiers.

    Raises:
        DicomDecodeError: see the module docstring for every refusal and its ``reason``.
    """
    return _decode(data, max_pixels=max_pixels, spec=None)


def dicom_pixels_to_input(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize decoded RGB pixels to the model input through the service's one resize function.

    Args:
        pixels: ``uint8 (H, W, 3)`` RGB, e.g. :attr:`DecodedDicom.pixels`.
        spec: the model's input spec (size, resize method).

    Returns:
        ``uint8 (spec.height, spec.width, 3)`` RGB: :func:`service.preprocessing.resize_to_array`
        of the same pixels as a Pillow image, exactly as for a JPEG/PNG upload.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) RGB pixels, got {pixels.dtype} {pixels.shape}")
    return resize_to_array(Image.fromarray(np.ascontiguousarray(pixels), mode="RGB"), spec)


def preprocess_dicom(data: bytes, spec: PreprocessSpec) -> tuple[np.ndarray, DicomRefs]:
    """The whole DICOM path for one image: checks -> decode -> the shared resize.

    Applies the same limits as :func:`service.preprocessing.decode_image` (``max_pixels``,
    ``min_side``, ``max_aspect_ratio``, with the same reasons) to Rows/Columns before decoding.
    For JPEG frames decoded by the service's JPEG path this is exactly
    ``preprocess_bytes(frame, spec)`` (same draft scaling for large photos), so a JPEG and its
    ``img2dcm`` wrapper give bit-identical model inputs.

    Returns:
        ``(uint8 (spec.height, spec.width, 3) RGB array, DicomRefs)``.

    Raises:
        DicomDecodeError: as :func:`decode_dicom`, plus ``too_small`` / ``bad_aspect_ratio``.
    """
    decoded = _decode(data, max_pixels=spec.max_pixels, spec=spec)
    return dicom_pixels_to_input(decoded.pixels, spec), decoded.refs


# --------------------------------------------------------------------------------------------
# internals
# --------------------------------------------------------------------------------------------
def _clean_uid(value: object) -> str | None:
    s = str(value).strip().rstrip("\x00").strip() if value is not None else ""
    return s if s and len(s) <= 64 and _UID_RE.match(s) else None


def _clean_text(value: object, limit: int = 64) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s[:limit] if s else None


def _read_refs(ds: pydicom.Dataset) -> DicomRefs:
    """UIDs, SOP class, modality and PatientID; tolerant of missing or malformed values."""
    def get(keyword: str) -> object:
        try:
            return ds.get(keyword)
        except Exception:  # malformed value: treat as absent (never quote it)
            return None

    sop_class = get("SOPClassUID")
    if sop_class is None and getattr(ds, "file_meta", None) is not None:
        try:
            sop_class = ds.file_meta.get("MediaStorageSOPClassUID")
        except Exception:
            sop_class = None
    modality = _clean_text(get("Modality"), 16)
    return DicomRefs(
        study_instance_uid=_clean_uid(get("StudyInstanceUID")),
        series_instance_uid=_clean_uid(get("SeriesInstanceUID")),
        sop_instance_uid=_clean_uid(get("SOPInstanceUID")),
        sop_class_uid=_clean_uid(sop_class),
        modality=modality.upper() if modality else None,
        patient_id=_clean_text(get("PatientID")),
        patient_id_issuer=_clean_text(get("IssuerOfPatientID")),
    )


def _uid_name(uid: str | None) -> str:
    """A standard UID's dictionary name, or the UID itself (UIDs are digits and dots: safe)."""
    if not uid:
        return "(none)"
    name = UID(uid).name
    return name if name and name != uid else uid


def _int_attr(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(keyword, default)
        return default if value is None or value == "" else int(value)
    except Exception:
        return None


class _Fail(Exception):
    """Internal: carries a reason/detail to the one place that adds the UIDs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _decode(data: bytes, *, max_pixels: int, spec: PreprocessSpec | None) -> DecodedDicom:
    if not data:
        raise DicomDecodeError("empty", "the file is empty (0 bytes)")
    if not is_dicom(data):
        raise DicomDecodeError(REASON_INVALID, "not a DICOM Part 10 file (no 'DICM' marker at byte 128)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception as exc:  # pydicom raises many types on corrupt input
        # Never pass pydicom's message on: it may quote element values.
        raise DicomDecodeError(
            REASON_INVALID, f"the DICOM file could not be parsed ({type(exc).__name__})"
        ) from None
    if len(ds) == 0:  # pydicom 3 returns an empty data set when the file ends inside encapsulated pixel data
        raise DicomDecodeError(REASON_INVALID, "the DICOM file holds no data set after its file meta information "
                               "(truncated or corrupt)")
    refs = _read_refs(ds)
    try:
        pixels, photometric, ts, decoder = _decode_dataset(ds, refs, max_pixels=max_pixels, spec=spec)
    except _Fail as fail:
        raise DicomDecodeError(fail.reason, fail.detail, refs.uids()) from None
    except ImageDecodeError as exc:  # from decode_image on the JPEG frame: its text is patient-free
        if exc.reason in ("too_many_pixels", "too_small", "bad_aspect_ratio"):
            raise DicomDecodeError(exc.reason, exc.detail, refs.uids()) from None
        raise DicomDecodeError(
            REASON_INVALID, "the encapsulated JPEG frame is truncated or corrupt", refs.uids()
        ) from None
    except Exception as exc:  # anything else a malformed header can provoke: refuse this image only
        raise DicomDecodeError(
            REASON_INVALID, f"the DICOM object could not be decoded ({type(exc).__name__})", refs.uids()
        ) from None
    return DecodedDicom(pixels=pixels, refs=refs, transfer_syntax_uid=ts,
                        photometric_interpretation=photometric, decoder=decoder)


def _decode_dataset(
    ds: pydicom.Dataset, refs: DicomRefs, *, max_pixels: int, spec: PreprocessSpec | None
) -> tuple[np.ndarray, str, str, str]:
    """Checks in the order a caller can act on, then the decode. Raises :class:`_Fail`."""
    ts = _transfer_syntax(ds)
    _check_sop_class(ds, refs)
    _check_transfer_syntax_supported(ts)
    _check_single_frame(ds)
    photometric = _colour_photometric(ds, ts)
    bits_stored = _bits_stored(ds)
    rows, cols = _rows_columns(ds)
    _check_geometry(cols, rows, max_pixels, spec)

    if ts in _PILLOW_JPEG_SYNTAXES and bits_stored == 8 and photometric in ("YBR_FULL_422", "YBR_FULL"):
        frame = _jpeg_frame(ds, rows, cols)
        if frame is not None:
            return _pillow_jpeg_pixels(frame, rows, cols, max_pixels, spec), photometric, ts, "pillow-jpeg"

    return _pydicom_rgb_pixels(ds, ts, rows, cols, bits_stored), photometric, ts, "pydicom"


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    """The Transfer Syntax UID from the file meta information; raises :class:`_Fail` if missing or invalid."""
    file_meta = getattr(ds, "file_meta", None)
    ts = _clean_uid(file_meta.get("TransferSyntaxUID") if file_meta is not None else None)
    if ts is None:
        raise _Fail(REASON_INVALID, "the file meta information has no valid Transfer Syntax UID")
    return ts


def _check_sop_class(ds: pydicom.Dataset, refs: DicomRefs) -> None:
    """Returns None if the object has integer pixel data of a photographic SOP class; else raises :class:`_Fail`."""
    sop_name = _uid_name(refs.sop_class_uid)
    if not any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        raise _Fail(REASON_NO_PIXEL_DATA, f"the DICOM object has no pixel data (SOP class: {sop_name})")
    if "PixelData" not in ds:  # Float / Double Float Pixel Data: parametric maps, not photographs
        raise _Fail(REASON_UNSUPPORTED_MODALITY,
                    f"floating-point pixel data is not a photograph (SOP class: {sop_name})")
    if refs.sop_class_uid is None:
        raise _Fail(REASON_INVALID, "the DICOM object has no valid SOP Class UID")
    if refs.sop_class_uid not in PHOTOGRAPHIC_SOP_CLASSES:
        raise _Fail(
            REASON_UNSUPPORTED_MODALITY,
            f"SOP class '{sop_name}' is not a colour photograph; accepted: VL Photographic Image, "
            "Dermoscopic Photography Image, Secondary Capture Image",
        )
    if refs.sop_class_uid in _SECONDARY_CAPTURE_CLASSES and refs.modality in NON_PHOTOGRAPHIC_MODALITIES:
        raise _Fail(
            REASON_UNSUPPORTED_MODALITY,
            f"Secondary Capture of modality {refs.modality} is not a skin photograph",
        )


def _check_transfer_syntax_supported(ts: str) -> None:
    """Returns None if ``ts`` is supported and its decoder installed; else raises :class:`_Fail`."""
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise _Fail(REASON_UNSUPPORTED_TRANSFER_SYNTAX, f"transfer syntax '{_uid_name(ts)}' is not supported")
    if ts not in _NATIVE_SYNTAXES and not get_decoder(UID(ts)).is_available:
        raise _Fail(
            REASON_UNSUPPORTED_TRANSFER_SYNTAX,
            f"no decoder for transfer syntax '{_uid_name(ts)}' is installed on this server",
        )


def _check_single_frame(ds: pydicom.Dataset) -> None:
    """Returns None if Number of Frames is 1 (or absent); else raises :class:`_Fail`."""
    frames = _int_attr(ds, "NumberOfFrames", 1)
    if frames is None or frames < 1:
        raise _Fail(REASON_INVALID, "Number of Frames is not a positive integer")
    if frames > 1:
        raise _Fail(
            REASON_MULTIFRAME,
            f"the DICOM object has {frames} frames; only single-frame images are accepted "
            "(send each frame as its own single-frame object)",
        )


def _colour_photometric(ds: pydicom.Dataset, ts: str) -> str:
    """The upper-case colour Photometric Interpretation (3 samples per pixel); else raises :class:`_Fail`."""
    photometric = _clean_text(ds.get("PhotometricInterpretation"), 16)
    photometric = photometric.upper() if photometric else ""
    samples = _int_attr(ds, "SamplesPerPixel")
    if photometric in _GREY_PHOTOMETRICS:
        raise _Fail(REASON_NOT_COLOUR, f"the image is grey-scale ({photometric}); a colour photograph is required")
    if photometric == "PALETTE COLOR":
        raise _Fail(REASON_NOT_COLOUR, "the image is palette colour (PALETTE COLOR); a colour photograph is required")
    if photometric not in _COLOUR_PHOTOMETRICS:
        if samples == 1:
            raise _Fail(REASON_NOT_COLOUR, "the image has 1 sample per pixel; a colour photograph is required")
        raise _Fail(REASON_UNSUPPORTED_PIXEL_FORMAT,
                    f"photometric interpretation '{photometric or '(none)'}' is not supported")
    if photometric in _JPEG_2000_ONLY_PHOTOMETRICS and ts not in (_JPEG_2000, _JPEG_2000_LOSSLESS):
        raise _Fail(REASON_INVALID, f"photometric interpretation {photometric} is only valid with JPEG 2000")
    if samples != 3:
        raise _Fail(REASON_INVALID, f"{photometric} needs 3 samples per pixel, the header says {samples}")
    return photometric


def _bits_stored(ds: pydicom.Dataset) -> int:
    """Bits Stored of unsigned 8- or 16-bit pixel data; else raises :class:`_Fail`."""
    bits_allocated = _int_attr(ds, "BitsAllocated")
    bits_stored = _int_attr(ds, "BitsStored", bits_allocated)
    representation = _int_attr(ds, "PixelRepresentation", 0)
    if bits_allocated not in (8, 16) or bits_stored is None or not 1 <= bits_stored <= bits_allocated:
        raise _Fail(REASON_UNSUPPORTED_PIXEL_FORMAT,
                    f"Bits Allocated {bits_allocated} / Bits Stored {bits_stored} is not supported (8 or 16)")
    if representation != 0:
        raise _Fail(REASON_UNSUPPORTED_PIXEL_FORMAT, "signed colour pixel data is not supported")
    return bits_stored


def _rows_columns(ds: pydicom.Dataset) -> tuple[int, int]:
    """(Rows, Columns), both positive; else raises :class:`_Fail`."""
    rows, cols = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    if not rows or not cols or rows < 1 or cols < 1:
        raise _Fail(REASON_INVALID, "Rows/Columns are missing or not positive")
    return rows, cols


def _pillow_jpeg_pixels(
    frame: bytes, rows: int, cols: int, max_pixels: int, spec: PreprocessSpec | None
) -> np.ndarray:
    """The JPEG frame decoded by the service's own JPEG path, as C-contiguous ``uint8`` RGB."""
    # The service's own JPEG path (Pillow + libjpeg-turbo, incl. its draft scaling when a
    # spec is given): bit-identical to uploading the JPEG itself.
    jpeg_spec = spec or PreprocessSpec(height=rows, width=cols, max_pixels=max_pixels,
                                       min_side=1, max_aspect_ratio=float("inf"))
    img = decode_image(frame, jpeg_spec)
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def _pydicom_rgb_pixels(ds: pydicom.Dataset, ts: str, rows: int, cols: int, bits_stored: int) -> np.ndarray:
    """pydicom's RGB pixels checked against Rows x Columns x 3, scaled to C-contiguous ``uint8``."""
    arr = _pydicom_pixels(ds, ts)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[:2] != (rows, cols):
        raise _Fail(REASON_INVALID, f"decoded pixel data has shape {arr.shape}, the header says {rows}x{cols}x3")
    if arr.dtype != np.uint8:
        peak = float(2 ** bits_stored - 1)
        arr = np.clip(np.rint(arr.astype(np.float64) * (255.0 / peak)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _check_geometry(width: int, height: int, max_pixels: int, spec: PreprocessSpec | None) -> None:
    """The size limits of :func:`service.preprocessing.decode_image`, with the same reasons."""
    if width * height > max_pixels:
        raise _Fail("too_many_pixels",
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if spec is None:
        return
    if min(width, height) < spec.min_side:
        raise _Fail("too_small", f"image is {width}x{height}; each side must be at least {spec.min_side} pixels")
    if max(width, height) / min(width, height) > spec.max_aspect_ratio:
        raise _Fail("bad_aspect_ratio",
                    f"image is {width}x{height}; aspect ratio above {spec.max_aspect_ratio:g}:1 is not a lesion photo")


def _jpeg_frame(ds: pydicom.Dataset, rows: int, cols: int) -> bytes | None:
    """The encapsulated JPEG frame if it is an ordinary 3-component YCbCr JPEG of Rows x Columns.

    Returns None (-> pydicom's decoder) when the frame carries an EXIF orientation other than 1:
    DICOM defines the pixel matrix as stored, while the service's JPEG path would rotate it.
    """
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception:
        raise _Fail(REASON_INVALID, "the encapsulated pixel data could not be read (truncated or corrupt)") from None
    try:
        with Image.open(io.BytesIO(frame), formats=["JPEG"]) as probe:
            size, mode = probe.size, probe.mode
            orientation = probe.getexif().get(0x0112, 1)
    except Exception:
        raise _Fail(REASON_INVALID, "the encapsulated JPEG frame is not a readable JPEG") from None
    if mode == "L":
        raise _Fail(REASON_NOT_COLOUR, "the encapsulated JPEG frame is grey-scale; a colour photograph is required")
    if mode != "RGB":
        raise _Fail(REASON_UNSUPPORTED_PIXEL_FORMAT, f"the encapsulated JPEG frame has mode {mode}")
    if size != (cols, rows):
        raise _Fail(REASON_INVALID,
                    f"the JPEG frame is {size[0]}x{size[1]}, the header says {cols}x{rows}")
    if orientation not in (None, 1):
        return None
    return frame


def _pydicom_pixels(ds: pydicom.Dataset, ts: str) -> np.ndarray:
    """pydicom's pixel pipeline, converted to RGB (YBR_FULL/_422 -> RGB; 4:2:2 upsampled)."""
    plugin = "pillow" if ts in _PILLOW_JPEG_SYNTAXES else ""  # the service's libjpeg-turbo for JPEG
    try:
        return pixel_array(ds, decoding_plugin=plugin, as_rgb=True)
    except Exception as exc:
        raise _Fail(
            REASON_INVALID,
            f"the pixel data could not be decoded (truncated or corrupt; {type(exc).__name__})",
        ) from None


__all__ = [
    "DICOM_REASONS", "DecodedDicom", "DicomDecodeError", "DicomRefs", "NON_PHOTOGRAPHIC_MODALITIES",
    "PHOTOGRAPHIC_SOP_CLASSES", "SUPPORTED_TRANSFER_SYNTAXES", "decode_dicom", "dicom_pixels_to_input",
    "is_dicom", "preprocess_dicom",
]
