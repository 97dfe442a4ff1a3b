"""DICOM in and FHIR out over HTTP: the real service (``python -m service`` on 127.0.0.1) with httpx,
NVIDIA's tritonclient and fhir.resources, on DICOM objects made by tools nobody here wrote.

- Real HAM10000 test JPEGs wrapped by dcmtk's ``img2dcm -vlp`` (VL Photographic Image, JPEG
  Baseline) with a distinctive patient (name, ID, birth date, free text): each answer equals the
  answer for the JPEG itself within 1e-4 -- multipart (declared ``application/dicom`` or found by
  the ``DICM`` marker), JSON base64 (plain or ``data:application/dicom``), V2 ``BYTES`` (JSON and
  the binary extension via tritonclient) and a job -- and echoes the three instance UIDs.
- Refusals (pydicom's CT_small.dcm and two-frame RGB, a grey-scale ``img2dcm`` object, a VL object
  whose pixel data dcmtk's ``dcmodify`` erased, a truncated object): one 422 naming each image and
  its reason, while good requests sent at the same time are answered.
- ``Accept: application/fhir+json``: the Bundle parses with fhir.resources (R4B models), every
  literal reference resolves inside it, the subject is the DICOM PatientID (the configured
  identifier system), dermserve's code systems sit under the configured canonical base.
- The patient's name, ID, birth date and free text never appear in the server's log (run at
  debug level), in ``/metrics``, in any error body or in a JSON answer.

dcmtk missing -> skip (FAIL under CI=true, see ``require``); .ci/install-system-deps.sh installs it.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import shutil
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from conftest import ServerProcess, require, wait_job
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from PIL import Image
from pydicom.data import get_testdata_file

from service.preprocessing import preprocess_file

ATOL = 1e-4
PATIENT_NAME = "Zyxwvut^Quixotically"
PATIENT_ID = "PID-Q9X7Z3"
OTHER_PATIENT_ID = "PID-W4K8J2"
BIRTH_DATE = "19230817"
FREE_TEXT = "Lesion Qwertyuiop left scapula"
#: Fragments of patient data that must never reach logs, metrics, errors or JSON answers.
SECRETS = ("Zyxwvut", "Quixotically", "Q9X7Z3", "W4K8J2", BIRTH_DATE, "Qwertyuiop")
CANONICAL_BASE = "https://fhir.example-hospital.org/dermserve"
PATIENT_SYSTEM = "urn:oid:1.2.840.999.1.5"
UIDS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")
FHIR_ACCEPT = {"Accept": "application/fhir+json"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def run(*args: str | Path) -> None:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}"


def img2dcm(src: Path, dst: Path, patient_id: str = PATIENT_ID) -> bytes:
    """dcmtk's img2dcm -vlp (VL Photographic Image, JPEG Baseline) with a distinctive patient."""
    run("img2dcm", "-vlp", "-k", f"PatientName={PATIENT_NAME}", "-k", f"PatientID={patient_id}",
        "-k", f"PatientBirthDate={BIRTH_DATE}", "-k", f"ImageComments={FREE_TEXT}",
        "-k", f"StudyDescription={FREE_TEXT}", src, dst)
    return dst.read_bytes()


def uids_of(data: bytes) -> dict[str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {"study_instance_uid": str(ds.StudyInstanceUID), "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID)}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def probs_of(prediction: dict, codes: list[str]) -> np.ndarray:
    return np.array([prediction["probabilities"][c] for c in codes])


def assert_no_secrets(*texts: object) -> None:
    for text in texts:
        s = text if isinstance(text, str) else json.dumps(text) if isinstance(text, (dict, list)) else str(text)
        for secret in SECRETS:
            assert secret not in s, f"patient data {secret!r} leaked into: {s[:400]!r}"


def refusal_detail(r: httpx.Response) -> dict[int, dict]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    assert_no_secrets(r.text)
    return {d["index"]: d for d in body["detail"]}


def check_bundle(bundle: dict, n_images: int) -> dict[str, list[dict]]:
    """Parse with fhir.resources, check every literal reference resolves inside the Bundle; return the
    resources by type."""
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    assert len(by_url) == len(bundle["entry"])
    kinds: dict[str, list[dict]] = {}
    for e in bundle["entry"]:
        kinds.setdefault(e["resource"]["resourceType"], []).append(e["resource"])

    def refs(node):
        if isinstance(node, dict):
            if "reference" in node:
                yield node["reference"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    literal = list(refs(bundle["entry"]))
    assert literal and all(ref in by_url for ref in literal), [r for r in literal if r not in by_url]
    (report,) = kinds["DiagnosticReport"]
    DiagnosticReport.model_validate(report)
    assert report["status"] == "preliminary"
    assert [by_url[r["reference"]]["resourceType"] for r in report["result"]] == ["Observation"] * n_images
    assert len(kinds["Observation"]) == n_images and len(kinds["Device"]) == 1
    for obs in kinds["Observation"]:
        Observation.model_validate(obs)
        assert by_url[obs["device"]["reference"]]["resourceType"] == "Device"
    return kinds


def component_probs(obs: dict, codes: list[str]) -> np.ndarray:
    values = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
    return np.array([values[f"probability-{c}"]["valueQuantity"]["value"] for c in codes])




# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dcmtk() -> None:
    missing = [t for t in ("img2dcm", "dcmodify") if shutil.which(t) is None]
    require(not missing, f"dcmtk tools missing: {missing} (apt-get install dcmtk; see .ci/install-system-deps.sh)")


@pytest.fixture(scope="module")
def server(server_factory) -> ServerProcess:
    """A server of its own (its log holds only this module's traffic), logging at debug level."""
    return server_factory(env={
        "DERMSERVE_LOG_LEVEL": "debug",
        "DERMSERVE_FHIR_CANONICAL_BASE": CANONICAL_BASE,
        "DERMSERVE_FHIR_PATIENT_IDENTIFIER_SYSTEM": PATIENT_SYSTEM,
        "DERMSERVE_JOB_POLL_INTERVAL_S": "0.2",
    })


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.base_url, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dicom-http")


@pytest.fixture(scope="module")
def pairs(dcmtk, test_images, work: Path) -> list[tuple[Path, bytes]]:
    """(HAM10000 test JPEG, its img2dcm -vlp wrapper) x 3."""
    return [(jpg, img2dcm(jpg, work / f"{jpg.stem}.dcm")) for jpg in test_images(3, offset=60)]


@pytest.fixture(scope="module")
def refused(dcmtk, pairs, work: Path) -> dict[str, tuple[bytes, str]]:
    """file name -> (DICOM bytes, the reason the service must give)."""
    jpg, good = pairs[0]
    grey_jpg = work / "grey.jpg"
    Image.open(jpg).convert("L").save(grey_jpg, quality=92)
    grey = img2dcm(grey_jpg, work / "grey.dcm")
    erased = work / "no-pixels.dcm"
    erased.write_bytes(good)
    run("dcmodify", "-nb", "-e", "(7fe0,0010)", erased)  # dcmtk erases the Pixel Data element
    def sample(name: str) -> bytes:  # pydicom's own test files (shipped in the wheel; never downloaded)
        return Path(get_testdata_file(name, download=False)).read_bytes()

    return {
        "ct.dcm": (sample("CT_small.dcm"), "dicom_unsupported_modality"),
        "grey.dcm": (grey, "dicom_not_colour"),
        "no-pixels.dcm": (erased.read_bytes(), "dicom_no_pixel_data"),
        "two-frames.dcm": (sample("SC_rgb_rle_2frame.dcm"), "dicom_multiframe"),
        "truncated.dcm": (good[:-500], "dicom_invalid"),  # cut inside the JPEG frame
    }


# --------------------------------------------------------------------------------------------
# DICOM in: the same answer as the JPEG it wraps
# --------------------------------------------------------------------------------------------
def test_multipart_dicom_equals_its_jpeg_and_echoes_the_uids(client, runtime, pairs):
    codes = runtime.class_codes
    (j0, d0), (_, d1), (_, d2) = pairs
    files = [("images", ("a.dcm", d0, "application/dicom")),  # declared
             ("images", ("b.bin", d1, "application/octet-stream")),  # found by DICM at byte 128
             ("images", ("c", d2, "image/jpeg")),  # mislabelled: the marker still decides
             ("images", (j0.name, j0.read_bytes(), "image/jpeg"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json" and r.headers["vary"] == "Accept"
    assert_no_secrets(r.text)
    preds = r.json()["predictions"]
    assert [p["id"] for p in preds] == ["a.dcm", "b.bin", "c", j0.name]
    for p, (jpg, dcm) in zip(preds, pairs):
        reference = runtime.predict_proba(preprocess_file(str(jpg), runtime.spec)[None])[0]
        np.testing.assert_allclose(probs_of(p, codes), reference, atol=ATOL)
        assert {k: p[k] for k in UIDS} == uids_of(dcm)
        assert "patient_id" not in p
    np.testing.assert_allclose(probs_of(preds[0], codes), probs_of(preds[3], codes), atol=ATOL)
    assert all(preds[3][k] is None for k in UIDS)


def test_json_base64_dicom(client, runtime, pairs):
    codes = runtime.class_codes
    (jpg, dcm) = pairs[1]
    body = {"images": [{"id": "plain", "data": b64(dcm)},
                       {"id": "data-url", "data": "data:application/dicom;base64," + b64(dcm)},
                       {"id": "jpeg", "data": b64(jpg.read_bytes())}]}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    plain, data_url, jpeg = r.json()["predictions"]
    for p in (plain, data_url):
        np.testing.assert_allclose(probs_of(p, codes), probs_of(jpeg, codes), atol=ATOL)
        assert {k: p[k] for k in UIDS} == uids_of(dcm)
    # a JPEG declared as DICOM is refused as the non-DICOM it is, naming the image
    bad = client.post("/predict", json={"images": [{"id": "liar", "data": "data:application/dicom;base64,"
                                                    + b64(jpg.read_bytes())}]})
    (d,) = refusal_detail(bad).values()
    assert (d["id"], d["reason"]) == ("liar", "dicom_invalid") and "DICM" in d["message"]


def test_v2_bytes_json_and_tritonclient_binary(client, server, runtime, pairs):
    name, codes = runtime.manifest.name, runtime.class_codes
    (jpg, dcm), (_, dcm1) = pairs[0], pairs[1]
    req = {"inputs": [{"name": "images", "shape": [3], "datatype": "BYTES",
                       "data": [b64(jpg.read_bytes()), b64(dcm), b64(dcm1)]}]}
    r = client.post(f"/v2/models/{name}/infer", json=req)
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    probs = np.array(out["data"]).reshape(3, 7)
    np.testing.assert_allclose(probs[1], probs[0], atol=ATOL)
    expected = [{k: "" for k in UIDS}, uids_of(dcm), uids_of(dcm1)]
    for k in UIDS:
        assert out["parameters"][k] == ",".join(e[k] for e in expected)
    assert out["parameters"]["classes"] == ",".join(codes)
    assert_no_secrets(r.text)

    require(importlib.util.find_spec("tritonclient") is not None and importlib.util.find_spec("gevent") is not None,
            "tritonclient[http] is not installed (pip install -e '.[test]')")
    import tritonclient.http as httpclient

    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60.0)
    try:
        raw = httpclient.InferInput("images", [2], "BYTES")
        raw.set_data_from_numpy(np.array([dcm, jpg.read_bytes()], dtype=np.object_), binary_data=True)
        result = triton.infer(name, [raw])  # raw DICOM bytes, binary tensor extension
        got = result.as_numpy("probabilities")
        np.testing.assert_allclose(got[0], got[1], atol=ATOL)
        np.testing.assert_allclose(got[0], probs[0], atol=ATOL)
        params = result.get_output("probabilities")["parameters"]
        assert params["sop_instance_uid"] == uids_of(dcm)["sop_instance_uid"] + ","
    finally:
        triton.close()


def test_job_with_dicom_then_its_fhir_report(client, server, runtime, pairs):
    codes = runtime.class_codes
    files = [("images", (f"{i}.dcm", dcm, "application/dicom")) for i, (_, dcm) in enumerate(pairs[:2])]
    files.append(("images", (pairs[0][0].name, pairs[0][0].read_bytes(), "image/jpeg")))
    r = client.post("/jobs", files=files, data={"reference": "study-1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    body = wait_job(client, job_id)
    assert body["status"] == "succeeded", body
    results = body["results"]
    assert_no_secrets(json.dumps(body))
    for res, (_, dcm) in zip(results[:2], pairs[:2]):
        assert {k: res[k] for k in UIDS} == uids_of(dcm)
    np.testing.assert_allclose(probs_of(results[0], codes), probs_of(results[2], codes), atol=ATOL)

    f = client.get(f"/jobs/{job_id}", headers=FHIR_ACCEPT)
    assert f.status_code == 200, f.text
    assert f.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
    kinds = check_bundle(f.json(), 3)
    (report,) = kinds["DiagnosticReport"]
    assert report["subject"] == {"type": "Patient", "identifier": {"system": PATIENT_SYSTEM, "value": PATIENT_ID}}
    for obs, res in zip(kinds["Observation"], results):
        np.testing.assert_allclose(component_probs(obs, codes), probs_of(res, codes), atol=1e-6)
    # the store keeps the PatientID for this report, and nothing else of the patient once computed
    db = Path(server.env["DERMSERVE_JOBS_DIR"]) / "jobs.sqlite3"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        assert con.execute("SELECT idx, patient_id FROM dermserve_job_patients WHERE job_id = ? ORDER BY idx",
                           (job_id,)).fetchall() == [(0, PATIENT_ID), (1, PATIENT_ID)]
        assert con.execute("SELECT count(*) FROM dermserve_job_items WHERE job_id = ? AND data IS NOT NULL",
                           (job_id,)).fetchone() == (0,)
        assert_no_secrets([row[0] for row in con.execute(
            "SELECT result FROM dermserve_job_items WHERE job_id = ?", (job_id,))])
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# refusals: 422 per image, nothing else affected
# --------------------------------------------------------------------------------------------
def test_refusals_name_each_image_while_concurrent_requests_are_answered(server, runtime, pairs, refused):
    good_jpg, good_dcm = pairs[2]
    bad_files = [("images", (name, data, "application/dicom")) for name, (data, _) in refused.items()]
    bad_files.append(("images", ("good.dcm", good_dcm, "application/dicom")))
    reasons = {name: reason for name, (_, reason) in refused.items()}

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60.0) as c:
            bad = [c.post("/predict", files=bad_files) for _ in range(3)]
            bad.append(c.post("/jobs", files=bad_files))
            good = [c.post("/predict", files=[("images", ("ok.dcm", good_dcm, "application/dicom"))])
                    for _ in range(4)]
            good.append(c.post("/predict", files=[("images", (good_jpg.name, good_jpg.read_bytes(), "image/jpeg"))]))
            out = await asyncio.gather(*bad, *good)
            return list(out[:len(bad)]), list(out[len(bad):])

    bad, good = asyncio.run(scenario())
    for r in bad:
        detail = refusal_detail(r)
        assert {d["id"]: d["reason"] for d in detail.values()} == reasons
        assert sorted(detail) == list(range(len(refused)))  # the good DICOM (last) is not named
        assert all(d["message"] for d in detail.values())
        assert f"{len(refused)} of {len(refused) + 1} images" in r.json()["error"]
    for r in good:
        assert r.status_code == 200, r.text
    codes = runtime.class_codes
    reference = runtime.predict_proba(preprocess_file(str(good_jpg), runtime.spec)[None])[0]
    for r in good:
        np.testing.assert_allclose(probs_of(r.json()["predictions"][0], codes), reference, atol=ATOL)


# --------------------------------------------------------------------------------------------
# FHIR out on /predict, and content negotiation
# --------------------------------------------------------------------------------------------
def test_predict_fhir_bundle(client, runtime, pairs):
    codes = runtime.class_codes
    files = [("images", (f"{i}.dcm", dcm, "application/dicom")) for i, (_, dcm) in enumerate(pairs)]
    files.append(("images", ("plain.jpg", pairs[0][0].read_bytes(), "image/jpeg")))
    as_json = client.post("/predict", files=files)
    r = client.post("/predict", files=files, headers=FHIR_ACCEPT)
    assert r.status_code == 200 and as_json.status_code == 200, r.text
    assert r.headers["content-type"] == "application/fhir+json; fhirVersion=4.0" and r.headers["vary"] == "Accept"
    bundle = r.json()
    kinds = check_bundle(bundle, 4)
    (report,) = kinds["DiagnosticReport"]
    assert report["subject"]["identifier"] == {"system": PATIENT_SYSTEM, "value": PATIENT_ID}
    studies = {uids_of(dcm)["study_instance_uid"] for _, dcm in pairs}
    assert {s["identifier"]["value"] for s in report["imagingStudy"]} == {f"urn:oid:{u}" for u in studies}
    for obs, pred, (_, dcm) in zip(kinds["Observation"], as_json.json()["predictions"], pairs):
        np.testing.assert_allclose(component_probs(obs, codes), probs_of(pred, codes), atol=1e-6)
        assert obs["subject"] == report["subject"]
        media = [d for d in obs["derivedFrom"] if d["type"] == "Media"]
        assert media[0]["identifier"]["value"] == f"urn:oid:{uids_of(dcm)['sop_instance_uid']}"
        top = obs["valueCodeableConcept"]["coding"]
        assert any(c["system"] == f"{CANONICAL_BASE}/CodeSystem/ham10000-class" and c["code"] == pred["label"]
                   for c in top)
        ood = {c["code"]["coding"][0]["code"]: c for c in obs["component"]
               if c["code"]["coding"][0]["code"].startswith("out-of-distribution")}
        if pred.get("ood_score") is None:  # a model without a guard: no verdict in the report either
            assert ood == {}
        else:
            assert ood["out-of-distribution"]["valueBoolean"] is pred["out_of_distribution"]
            assert ood["out-of-distribution-score"]["valueQuantity"]["value"] == pytest.approx(pred["ood_score"],
                                                                                                 abs=1e-6)
    jpeg_obs = kinds["Observation"][3]
    assert "subject" not in jpeg_obs and "derivedFrom" not in jpeg_obs
    systems = {c["system"] for o in kinds["Observation"] for comp in o["component"] for c in comp["code"]["coding"]}
    assert systems == {f"{CANONICAL_BASE}/CodeSystem/dermserve-result"}
    assert PATIENT_NAME not in r.text and BIRTH_DATE not in r.text and "Qwertyuiop" not in r.text


def test_images_of_two_patients_are_no_single_report(client, pairs, work):
    other = img2dcm(pairs[0][0], work / "other-patient.dcm", patient_id=OTHER_PATIENT_ID)
    files = [("images", ("p1.dcm", pairs[0][1], "application/dicom")),
             ("images", ("p2.dcm", other, "application/dicom"))]
    r = client.post("/predict", files=files, headers=FHIR_ACCEPT)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["reason"] == "fhir_conflicting_patients"
    assert_no_secrets(r.text)
    assert client.post("/predict", files=files).status_code == 200  # as JSON they are fine


@pytest.mark.parametrize("accept,expected", [
    (None, "application/json"),
    ("*/*", "application/json"),
    ("application/*", "application/json"),
    ("application/json", "application/json"),
    ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),  # a browser
    ("application/fhir+json;q=0.5, application/json", "application/json"),
    ("application/fhir+json", "application/fhir+json"),
    ("application/json;q=0.5, application/fhir+json", "application/fhir+json"),
    ("application/fhir+json; fhirVersion=4.0, */*;q=0.1", "application/fhir+json"),
    ("text/html", 406),
    ("application/fhir+json; fhirVersion=5.0", 406),
    ("application/json;q=0, application/fhir+json;q=0", 406),
])
def test_accept_negotiation(client, pairs, accept, expected):
    headers = {"Accept": accept} if accept is not None else {}
    files = [("images", ("a.dcm", pairs[0][1], "application/dicom"))]
    r = client.post("/predict", files=files, headers=headers)
    if expected == 406:
        assert r.status_code == 406, r.text
        assert r.headers["content-type"].startswith("application/json") and "application/fhir+json" in r.json()["error"]
        assert client.get("/jobs/0123456789abcdef0123456789abcdef", headers=headers).status_code == 406
    else:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].split(";")[0] == expected


def test_openapi_documents_dicom_and_both_media_types(client):
    spec = client.get("/openapi.json").json()
    for path, method in (("/predict", "post"), ("/jobs/{job_id}", "get")):
        op = spec["paths"][path][method]
        content = op["responses"]["200"]["content"]
        assert set(content) == {"application/json", "application/fhir+json"}
        Bundle.model_validate(content["application/fhir+json"]["example"])
        assert "406" in op["responses"]
    encoding = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["encoding"]
    assert "application/dicom" in encoding["images"]["contentType"]
    props = spec["components"]["schemas"]["Prediction"]["properties"]
    assert set(UIDS) <= set(props)


# --------------------------------------------------------------------------------------------
# patient data: never in logs, metrics, errors -- checked last, over everything this module sent
# --------------------------------------------------------------------------------------------
def test_patient_data_never_reaches_logs_metrics_or_errors(client, server, pairs, refused, work):
    def loud(ds):  # values pydicom's validation would quote in a warning, an overlong PatientID
        ds.PatientID = PATIENT_ID + "X" * 70
        ds.StudyInstanceUID = "Q9X7Z3.Zyxwvut"

    ds = pydicom.dcmread(io.BytesIO(pairs[0][1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loud(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    loud_bytes = buf.getvalue()
    for data in [loud_bytes, pairs[0][1], *(d for d, _ in refused.values() if b"Zyxwvut" in d)]:
        assert PATIENT_NAME.encode() in data and BIRTH_DATE.encode() in data  # the secrets really are sent

    bodies = []
    r = client.post("/predict", files=[("images", ("loud.dcm", loud_bytes, "application/dicom"))])
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["study_instance_uid"] is None  # not a UID: not echoed
    bodies.append(r.text)
    r = client.post("/predict", files=[("images", ("loud.dcm", loud_bytes, "application/dicom"))],
                    headers=FHIR_ACCEPT)
    assert r.status_code == 200 and PATIENT_ID in r.text  # the FHIR subject is the one place it goes
    for name, (data, _) in refused.items():
        for kw in ({"files": [("images", (name, data, "application/dicom"))]},
                   {"json": {"images": [{"id": name, "data": b64(data)}]}}):
            r = client.post("/predict", **kw)
            assert r.status_code == 422
            bodies.append(r.text)
    r = client.post(f"/v2/models/{client.get('/model').json()['name']}/infer",
                    json={"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                      "data": [b64(refused["truncated.dcm"][0])]}]})
    assert r.status_code == 422
    bodies.append(r.text)
    r = client.post("/predict", files=[("images", ("p.dcm", pairs[0][1], "application/dicom")),
                                       ("images", ("q.dcm", img2dcm(pairs[1][0], work / "q.dcm", OTHER_PATIENT_ID),
                                                   "application/dicom"))], headers=FHIR_ACCEPT)
    assert r.status_code == 422
    bodies.append(r.text)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "dermserve_http_requests" in metrics.text
    time.sleep(0.5)  # let the last access lines reach the log file
    log = server.log()
    assert log.count('"logger": "dermserve.access"') >= 20, "the server log does not hold this module's requests"
    assert '"level": "debug"' in log, "the server did not log at debug level"
    assert_no_secrets(log, metrics.text, *bodies)


# --------------------------------------------------------------------------------------------
# jobs: the stored PatientID lives exactly as long as the job's results (no server needed)
# --------------------------------------------------------------------------------------------
def test_job_patients_are_kept_with_the_results_and_deleted_with_the_job(tmp_path):
    from service.jobs.store import JobStore, sqlite_url

    store = JobStore(sqlite_url(tmp_path))
    jobs = {name: name[0] * 32 for name in ("done", "cancelled", "failed")}
    for job_id in jobs.values():
        store.create(job_id, None, None, [("a.dcm", b"1"), ("b.jpg", b"2")])
    claimed = store.claim("w", 6, lease_s=30)
    done = jobs["done"]
    patients = {(done, 0): (PATIENT_ID, "ISSUER"), ("lost" * 8, 0): (OTHER_PATIENT_ID, None)}
    assert store.complete("w", [(done, i, f'{{"x": {i}}}') for i in (0, 1)], "m", "1", patients) == 2
    assert store.complete("w", [(jobs["cancelled"], 0, "{}")], "m", "1", {(jobs["cancelled"], 0): (PATIENT_ID, None)})
    store.cancel(jobs["cancelled"], None)
    store.fail([jobs["failed"]], "boom")
    assert len(claimed) == 6
    assert store.get(done, None).patients is None  # read only for the FHIR report
    assert store.get(done, None, patients=True).patients == {0: (PATIENT_ID, "ISSUER")}
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    query = "SELECT job_id, idx FROM dermserve_job_patients"
    assert db.execute(query).fetchall() == [(done, 0)]  # cancelled/failed: dropped at once; lost claim: none
    assert store.sweep(retention_s=0) == 3
    assert db.execute(query).fetchall() == []
    db.close()
    store.close()


def test_fhir_of_a_job_without_results_is_refused(tmp_path):
    from service.jobs import JobNotFoundError, JobNotSucceededError
    from service.jobs.service import JobsService
    from service.jobs.store import JobStore, sqlite_url
    from service.settings import JobSettings

    store = JobStore(sqlite_url(tmp_path))
    store.create("q" * 32, None, None, [("a", b"1")])
    jobs = JobsService(store, None, None, JobSettings())  # type: ignore[arg-type] - only the store is used
    with pytest.raises(JobNotSucceededError, match="queued"):
        asyncio.run(jobs.get_fhir("q" * 32, None))
    with pytest.raises(JobNotFoundError):
        asyncio.run(jobs.get_fhir("z" * 32, None))
    store.close()


def test_fhir_settings():
    from pydantic import ValidationError

    from service.codecs.fhir import DEFAULT_CANONICAL_BASE
    from service.settings import Settings

    s = Settings(_env_file=None)
    assert s.fhir.canonical_base == DEFAULT_CANONICAL_BASE and s.fhir.patient_identifier_system is None
    s = Settings(_env_file=None, fhir_canonical_base=CANONICAL_BASE + "/",
                 fhir_patient_identifier_system=PATIENT_SYSTEM)
    assert (s.fhir.canonical_base, s.fhir.patient_identifier_system) == (CANONICAL_BASE, PATIENT_SYSTEM)
    for bad in ({"fhir_canonical_base": "dermserve.org/fhir"}, {"fhir_canonical_base": "ftp://x/y"},
                {"fhir_patient_identifier_system": "not a uri"}):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, **bad)


def test_fhir_reports_the_guard_and_honours_reject(server_factory, model_dir, test_images):
    """With a model that has an out-of-distribution guard: the FHIR answer carries its verdict, and the
    reject policy refuses FHIR requests exactly like JSON ones (skipped for a model without a guard)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    require(manifest.get("ood") is not None, f"the model at {model_dir} has no out-of-distribution guard")
    pytest.importorskip("skimage", reason="scikit-image builds the OOD set (pip install -e '.[train]')")
    from trainer.oodset import build_ood_set

    blank = next(im for im in build_ood_set() if im.name == "drawn/blank_white")
    lesion = test_images(1, offset=3)[0]
    files = [("images", (lesion.name, lesion.read_bytes(), "image/jpeg")), ("images", ("blank.png", blank.png,
                                                                                       "image/png"))]
    flag = server_factory(env={})
    r = httpx.post(flag.base_url + "/predict", files=files, headers=FHIR_ACCEPT, timeout=60)
    assert r.status_code == 200, r.text
    observations = check_bundle(r.json(), 2)["Observation"]
    verdicts = [{c["code"]["coding"][0]["code"]: c for c in o["component"]}["out-of-distribution"]["valueBoolean"]
                for o in observations]
    assert verdicts[1] is True
    reject = server_factory(env={"DERMSERVE_OOD_POLICY": "reject"})
    r = httpx.post(reject.base_url + "/predict", files=files, headers=FHIR_ACCEPT, timeout=60)
    assert r.status_code == 422, r.text
    assert [(d["index"], d["reason"]) for d in r.json()["detail"]] == [(1, "out_of_distribution")]
