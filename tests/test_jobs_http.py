"""Jobs over real HTTP on the local server: moto's server for S3, DynamoDB and SQS, the worker and finisher polled."""

from __future__ import annotations

import io

import httpx
import numpy as np

from tests.conftest import FEATURES, wait_for_job


def test_a_sobol_job_runs_on_the_local_server_and_its_results_download_from_the_presigned_url(local_server):
    base_url, _ = local_server
    # Given a Sobol' design submitted as a user would with curl
    response = httpx.post(
        f"{base_url}/jobs?format=npy", json={"design": {"method": "sobol", "n": 4096, "seed": 3}}, timeout=30
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"].endswith(f"/jobs/{job['id']}")
    # When the local worker and finisher have run it
    done = wait_for_job(base_url, job["id"])
    assert done["status"] == "SUCCEEDED", done
    # Then its results download from the presigned URL, without the API, and equal /predict's answers
    results = np.load(io.BytesIO(httpx.get(done["results"]["url"], timeout=60).content))
    assert len(results) == 4096
    points = np.column_stack([results[name] for name in FEATURES])
    body = {name: points[:, i].tolist() for i, name in enumerate(FEATURES)}
    expected = httpx.post(f"{base_url}/predict", json=body, timeout=60).json()
    np.testing.assert_allclose(results["y_mean"], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(results["y_variance"], expected["variance"], rtol=1e-9)


def test_a_csv_uploaded_to_the_presigned_url_runs(local_server):
    base_url, _ = local_server
    job = httpx.post(f"{base_url}/jobs", json={"upload": {"format": "csv"}}, timeout=30).json()
    points = np.random.default_rng(8).uniform(0, 1, (300, 4))
    text = ",".join(FEATURES) + "\n" + "\n".join(",".join(map(repr, row)) for row in points.tolist())
    put = httpx.put(job["upload"]["url"], content=text.encode(), timeout=30)
    assert put.status_code == 200, put.text
    started = httpx.post(f"{base_url}/jobs/{job['id']}/start", timeout=30)
    assert started.status_code == 202, started.text
    done = wait_for_job(base_url, job["id"])
    assert done["status"] == "SUCCEEDED", done
    csv = httpx.get(done["results"]["url"], timeout=60).text
    header, first = csv.splitlines()[:2]
    assert header.replace('"', "") == "x1,x2,x3,x4,y_mean,y_variance"
    np.testing.assert_array_equal(np.array(first.split(",")[:4], dtype=float), points[0])


def test_an_npy_uploaded_to_the_presigned_url_is_predicted_in_place(local_server):
    # Given a float32 .npy of 1,500 points PUT over HTTP to moto's server
    base_url, _ = local_server
    job = httpx.post(f"{base_url}/jobs?format=npy", json={"upload": {"format": "npy"}}, timeout=30).json()
    points = np.random.default_rng(9).uniform(0, 1, (1_500, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, points)
    assert httpx.put(job["upload"]["url"], content=buffer.getvalue(), timeout=30).status_code == 200
    # When it is started and run (chunks read it by ranged GETs pinned to its ETag)
    started = httpx.post(f"{base_url}/jobs/{job['id']}/start", timeout=30)
    assert started.status_code == 202, started.text
    done = wait_for_job(base_url, job["id"])
    # Then the results hold its points, as float64
    assert done["status"] == "SUCCEEDED", done
    results = np.load(io.BytesIO(httpx.get(done["results"]["url"], timeout=60).content))
    np.testing.assert_array_equal(np.column_stack([results[name] for name in FEATURES]), points.astype(float))


def test_an_empty_upload_is_refused_when_started(local_server):
    base_url, _ = local_server
    job = httpx.post(f"{base_url}/jobs", json={"upload": {"format": "npy"}}, timeout=30).json()
    assert httpx.put(job["upload"]["url"], content=b"", timeout=30).status_code == 200
    started = httpx.post(f"{base_url}/jobs/{job['id']}/start", timeout=30)
    assert started.status_code == 422, started.text
    assert started.json()["details"] == [{"field": "upload", "message": "the uploaded .npy is empty (0 bytes)"}]
