"""The dashboard in Debian's Chromium, against the real API, PostgreSQL, broker and a worker: log in
with a key, watch a running job's curve grow from its event stream, see a failed job's error, the
jobs and files pages; names that look like HTML stay text; every page works under its CSP."""

from __future__ import annotations

import re

import numpy as np

from tests.support.api import create_job, upload, wait_done
from tests.support.browser import log_in
from tests.support.datasets import npz
from tests.support.eventually import eventually

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_FILE = HOSTILE + ".npz"


def test_the_ui_is_served_with_a_strict_content_security_policy(live):
    import urllib.request

    for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
        with urllib.request.urlopen(live.base_url + path) as response:
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/ui/..%2Fapp.py", "/ui/nope.js", "/ui/.hidden"):
        try:
            urllib.request.urlopen(live.base_url + path)
            raise AssertionError(f"{path} was served")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404


def test_a_wrong_key_is_refused_and_a_right_one_kept_for_the_session(live, watched, tenant):
    page = watched.page
    page.goto(f"{live.base_url}/ui/")
    page.fill("#api-key", "maas_not_a_key")
    page.click("button[type=submit]")
    page.wait_for_selector("text=That key was refused.")
    watched.console.clear()  # the browser logs the refused call's 401
    watched.screenshot("login")
    log_in(watched, live, tenant.key)
    assert page.evaluate("sessionStorage.getItem('maas.api_key')") == tenant.key
    assert page.evaluate("localStorage.length") == 0
    page.reload()  # the same tab keeps it: no second prompt
    page.wait_for_selector("h1:text('Jobs')")
    assert tenant.key not in page.url


def test_a_running_jobs_curve_grows_as_steps_arrive(live, watched, tenant, job_worker):
    body = {"type": "test.sleep", "spec": {"seconds": 8, "steps": 16}, "metadata": {"name": "sleepy"}}
    job = live.run(lambda api: _json(create_job(api, tenant, body)))
    log_in(watched, live, tenant.key, f"#/jobs/{job['id']}")
    page = watched.page
    chart = page.locator("[data-testid=loss-chart]")

    def points() -> int:  # polled from here: the page's CSP refuses Playwright's evaluated predicates
        return int(chart.get_attribute("data-points") or 0)

    first = eventually(lambda: (n := points()) >= 2 and n, timeout=20, what="two points on the loss curve")
    assert first < 16
    watched.screenshot("job-running")
    eventually(lambda: points() > first, timeout=20, what="the loss curve to grow")
    page.wait_for_selector("[data-testid=job-progress] >> text=step 16 of 16", timeout=30_000)
    page.wait_for_selector(".facts .status-succeeded")
    assert int(chart.get_attribute("data-points") or 0) == 16
    assert page.locator("[data-testid=loss-chart] polyline").count() == 1
    assert page.locator("[data-testid=events] tbody tr").count() >= 16
    page.goto(f"{live.base_url}/ui/#/jobs")
    page.wait_for_selector(f"a:text('{job['id']}')")
    watched.screenshot("jobs")


def test_a_failed_job_shows_its_error(live, watched, tenant, job_worker):
    body = {"type": "test.sleep", "spec": {"steps": 2, "fail_with": "nan_loss"}}
    job = live.run(lambda api: _json(create_job(api, tenant, body, prefer_wait_s=20)))
    assert job["status"] == "failed"
    log_in(watched, live, tenant.key, f"#/jobs/{job['id']}")
    error = watched.page.wait_for_selector("[data-testid=job-error]")
    assert error.text_content() == "nan_loss: failing as the spec asked"
    watched.screenshot("job-failed")
    succeeded = live.run(
        lambda api: _json(create_job(api, tenant, {"type": "test.sleep", "spec": {}}, prefer_wait_s=20))
    )
    page = watched.page
    page.goto(f"{live.base_url}/ui/#/jobs")
    page.wait_for_selector(f"a:text('{succeeded['id']}')")
    page.select_option("[data-testid=filter-status]", "failed")
    page.wait_for_url("**/ui/#/jobs?status=failed")
    page.wait_for_selector(f"[data-testid=jobs-table] a:text('{job['id']}')")
    statuses = page.locator("[data-testid=jobs-table] tbody [data-status]").all_text_contents()
    assert statuses == ["failed"]


def test_names_that_look_like_html_stay_text(live, watched, tenant, job_worker):
    body = {"type": "test.sleep", "spec": {"steps": 1}, "metadata": {"name": HOSTILE}}
    job = live.run(lambda api: _json(create_job(api, tenant, body)))
    live.run(lambda api: wait_done(api, tenant, job["id"]))
    live.run(lambda api: upload(api, tenant, npz(x=np.zeros((4, 2), np.float32)), HOSTILE_FILE))
    page = watched.page
    log_in(watched, live, tenant.key)
    cell = page.wait_for_selector(f"[data-testid=jobs-table] td:text-is('{HOSTILE}')")
    assert cell.is_visible()
    page.goto(f"{live.base_url}/ui/#/jobs/{job['id']}")
    assert page.wait_for_selector("[data-testid=job-name]").text_content() == HOSTILE
    page.goto(f"{live.base_url}/ui/#/files")
    assert page.wait_for_selector(f"[data-testid=files-table] td:text-is('{HOSTILE_FILE}')").is_visible()
    watched.screenshot("files")
    assert page.locator("main img").count() == 0  # no element was made of it
    assert watched.dialogs == []


async def _json(response_coroutine):
    response = await response_coroutine
    assert response.status in (200, 201, 202), await response.text()
    return await response.json()


def test_key_never_appears_in_a_request_url(live, watched, tenant, job_worker):
    urls: list[str] = []
    watched.page.on("request", lambda request: urls.append(request.url))
    log_in(watched, live, tenant.key)
    for fragment in ("#/models", "#/deployments", "#/files", "#/jobs"):
        watched.page.goto(f"{live.base_url}/ui/{fragment}")
        watched.page.wait_for_selector("main h1")
    assert urls and not [u for u in urls if tenant.key in u or re.search("api_key|token=", u)]
