"""The image decoder alone (service.decoder): bytes in, pixels or per-image errors out; no HTTP, no model.
Also its seam for later formats (the format sniff and a registered format decoder's metadata)."""

from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import decoder as decoder_module
from service.decoder import DecodedImage, ImageDecoder, ImageFormat, decode_one, decode_raster, format_decoder
from service.inputs import EncodedImage, InvalidInputError
from service.preprocessing import PreprocessSpec, preprocess_bytes
from service.traffic import InteractiveTraffic

SPEC = PreprocessSpec(height=24, width=32)


def png(color=(200, 40, 10), size=(60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def dicom_like(payload: bytes = b"") -> bytes:
    return b"\0" * 128 + b"DICM" + payload


def decode(images: list[EncodedImage], **kw) -> list[DecodedImage]:
    async def body():
        with ThreadPoolExecutor(2) as pool:
            return await ImageDecoder(SPEC, pool, InteractiveTraffic(), **kw).decode(images)
    return asyncio.run(body())


def test_decodes_bytes_and_base64_like_the_shared_preprocessing():
    data = png()
    out = decode([EncodedImage(data=data, id="a"), EncodedImage(b64=base64.b64encode(data).decode())])
    assert [d.id for d in out] == ["a", None]
    for d in out:
        assert d.pixels.shape == (24, 32, 3) and d.pixels.dtype == np.uint8 and dict(d.metadata) == {}
        np.testing.assert_array_equal(d.pixels, preprocess_bytes(data, SPEC))


def test_every_failed_image_is_named_and_the_request_refused_whole():
    images = [EncodedImage(data=png(), id="ok"), EncodedImage(data=b"not an image", id="junk"),
              EncodedImage(b64="%%%", id="b64"), EncodedImage(error=("not_a_file", "a text field")),
              EncodedImage(data=b"")]
    with pytest.raises(InvalidInputError) as err:
        decode(images)
    detail = {d["index"]: (d["id"], d["reason"]) for d in err.value.detail}
    assert detail == {1: ("junk", "not_an_image"), 2: ("b64", "invalid_base64"), 3: (None, "not_a_file"),
                      4: (None, "empty")}
    assert "4 of 5 images" in err.value.message


def test_without_a_registered_format_dicom_takes_the_pillow_path(monkeypatch):
    monkeypatch.setattr(decoder_module, "FORMATS", [])
    result = decode_one(EncodedImage(data=dicom_like(b"rest")), SPEC)
    assert isinstance(result, tuple) and result[0] == "not_an_image"


def test_dicom_is_registered_and_chosen_by_marker_or_declared_media_type():
    """DICOM bytes (DICM at 128) or a declared application/dicom go to the DICOM codec, whose
    refusals are dicom_* reasons; other bytes stay on the default path."""
    assert [f.name for f in decoder_module.FORMATS] == ["dicom"]
    assert format_decoder(dicom_like()) is decoder_module.decode_dicom
    assert format_decoder(png()) is decode_raster
    assert format_decoder(png(), "application/dicom") is decoder_module.decode_dicom
    assert format_decoder(png(), "image/png") is decode_raster
    # a header without a transfer syntax: refused by the DICOM codec, not 'not_an_image'
    assert decode_one(EncodedImage(data=dicom_like(b"rest")), SPEC)[0] == "dicom_invalid"  # type: ignore[index]
    # declared DICOM without the Part 10 marker (a mislabelled PNG): a DICOM refusal that says so
    for img in (EncodedImage(data=png(), media_type="application/dicom"),
                EncodedImage(b64="data:application/dicom;base64," + base64.b64encode(png()).decode())):
        reason, message = decode_one(img, SPEC)  # type: ignore[misc]
        assert reason == "dicom_invalid" and "DICM" in message
    # the same PNG as a data:image/png URL is an ordinary image
    ok = decode_one(EncodedImage(b64="data:image/png;base64," + base64.b64encode(png()).decode()), SPEC)
    assert isinstance(ok, DecodedImage) and ok.uids() == {} and ok.dicom is None


def test_a_real_dicom_object_decodes_with_its_uids_as_metadata():
    from pydicom.data import get_testdata_file

    from service.codecs.dicom import preprocess_dicom

    data = Path(get_testdata_file("SC_rgb_rle.dcm", download=False)).read_bytes()  # 100x100 RGB, RLE
    (out,) = decode([EncodedImage(data=data, id="sc.dcm")])
    pixels, refs = preprocess_dicom(data, SPEC)
    np.testing.assert_array_equal(out.pixels, pixels)
    assert out.id == "sc.dcm" and out.dicom == refs
    assert out.uids() == refs.uids() and out.uids()["study_instance_uid"].startswith("1.2.826.0.1.3680043")
    assert "patient_id" not in out.uids()


def test_a_registered_format_is_sniffed_decoded_and_its_metadata_kept(monkeypatch):
    """The seam for DICOM: a format registered in FORMATS gets the bytes its sniff accepts; the
    metadata its decoder returns travels with the decoded image; other bytes take the default path."""
    seen = []

    def fake_dicom(data: bytes, spec: PreprocessSpec):
        seen.append(len(data))
        return np.zeros((spec.height, spec.width, 3), np.uint8), {"dicom": {"study_instance_uid": "1.2.3"}}

    fmt = ImageFormat("dicom", lambda data: data[128:132] == b"DICM", fake_dicom)
    monkeypatch.setattr(decoder_module, "FORMATS", [fmt])
    assert format_decoder(dicom_like()) is fake_dicom and format_decoder(png()) is decode_raster
    (out,) = decode([EncodedImage(data=dicom_like(b"xyz"), id="d")])
    assert seen == [135] and out.id == "d" and dict(out.metadata) == {"dicom": {"study_instance_uid": "1.2.3"}}
    (raster,) = decode([EncodedImage(data=png())])
    assert dict(raster.metadata) == {} and seen == [135]


def test_idle_fast_path_needs_an_idle_model():
    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *a, **kw):
            CountingPool.submitted += 1
            return super().submit(*a, **kw)

    idle = {"model": False}

    async def body():
        with CountingPool(1) as pool:
            dec = ImageDecoder(SPEC, pool, InteractiveTraffic(), inline_max_bytes=1 << 20,
                               model_idle=lambda: idle["model"])
            await dec.decode([EncodedImage(data=png())])
            assert CountingPool.submitted == 1  # the model is busy: the pool
            idle["model"] = True
            await dec.decode([EncodedImage(data=png())])
            assert CountingPool.submitted == 1  # idle: inline
            with dec.traffic.request(), dec.traffic.request():  # another request in flight
                await dec.decode([EncodedImage(data=png())])
            assert CountingPool.submitted == 2

    asyncio.run(body())
