"""End-to-end tests in a real browser: Playwright drives Debian's Chromium (headless) against
pytest-django's live server. Screenshots of each page land in $EDGEFLEET_TEST_ARTIFACTS
(default: test-artifacts/ in the repository) so a person can look at them."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM calls from the test body
# are still plain synchronous calls, so the async-safety check only gets in the way here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
ARTIFACTS = Path(os.environ.get("EDGEFLEET_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
PASSWORD = "correct horse battery staple"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"no Chromium at {CHROMIUM}: apt-get install chromium "
                                                  "(or set EDGEFLEET_CHROMIUM) to run the browser tests"),
]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {ARTIFACTS}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def people(transactional_db, django_user_model):
    """viewer, operator and admin users; the role groups are recreated because transactional
    tests flush the tables the migration filled."""
    from django.contrib.auth.models import Group

    from fleet.roles_sync import sync_role_permissions

    groups = {name: Group.objects.get_or_create(name=name)[0] for name in ("viewer", "operator", "admin")}
    sync_role_permissions()
    users = {}
    for name, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")):
        user = django_user_model.objects.create_user(name, password=PASSWORD)
        user.groups.add(groups[role])
        users[role] = user
    return users


@pytest.fixture
def open_page(browser, live_server):
    """A new page logged in as ``username`` (through the real login form)."""
    contexts = []

    def make(username: str, viewport=(1366, 900)):
        ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(15000)
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def enroll(server: str, token: str, name: str) -> dict:
    body = json.dumps({"enrollment_token": token, "name": name, "fingerprint": f"fp-{name}",
                       "inventory": {"hostname": name, "os": "Debian 12", "arch": "aarch64", "cpu_cores": 4,
                                     "cpu_model": "Cortex-A72", "memory_total_bytes": 4 * 1024**3,
                                     "disk_total_bytes": 32 * 1024**3, "agent_version": "0.1.0",
                                     "onnxruntime_version": "1.20.1",
                                     "execution_providers": ["CPUExecutionProvider"]}}).encode()
    req = urllib.request.Request(f"{server}/api/v1/agent/enroll", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
        return json.loads(resp.read())


def agent_call(server: str, device_token: str, method: str, path: str, body=None) -> dict:
    """One call of the agent protocol with a device token, as a real agent makes it."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{server}{path}", data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {device_token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from None


def test_enroll_accept_and_roles(people, open_page, live_server):
    from fleet.models import Device, DeviceStatus

    # An operator logs in and creates an enrollment token in the UI.
    page = open_page("otto")
    shot(page, "01-overview-empty")
    page.click("text=Devices")
    page.click("text=Enrollment tokens")
    page.fill("#id_description", "berlin cameras")
    page.fill("#id_labels", "site=berlin")
    page.click("[data-testid=token-form] button[type=submit]")
    token = page.inner_text("[data-testid=token-value]").strip()
    command = page.inner_text("[data-testid=agent-command]")
    assert token.startswith("efe_")
    assert command == f"edgefleet-agent enroll --server {live_server.url} --token {token}"
    shot(page, "02-enrollment-token-created")

    # Two agents enroll with it through the real protocol; they wait for approval.
    enroll(live_server.url, token, "cam-berlin-1")
    enroll(live_server.url, token, "cam-berlin-2")
    page.goto(f"{live_server.url}/devices/pending/")
    page.wait_for_selector("tr[data-device=cam-berlin-1]")
    shot(page, "03-pending-admissions")
    page.click("[data-testid=accept-cam-berlin-1]")
    page.wait_for_selector("text=cam-berlin-1 accepted.")
    assert Device.objects.get(name="cam-berlin-1").status == DeviceStatus.ACTIVE

    # Listed with its label; search narrows the table without a reload (htmx).
    page.goto(f"{live_server.url}/devices/")
    page.wait_for_selector("tr[data-device=cam-berlin-1]")
    assert "site=berlin" in page.inner_text("tr[data-device=cam-berlin-1]")
    page.fill("input[name=q]", "berlin-2")
    page.wait_for_function("!document.querySelector('tr[data-device=cam-berlin-1]')")
    assert page.is_visible("tr[data-device=cam-berlin-2]")
    assert "q=berlin-2" in page.url
    shot(page, "04-devices-search")

    # Bulk: accept the second one from the list.
    page.fill("input[name=q]", "")
    page.wait_for_selector("tr[data-device=cam-berlin-1]")
    page.check("tr[data-device=cam-berlin-2] input[name=devices]")
    page.select_option("select[name=action]", "accept")
    page.click("text=Apply to selected")
    page.wait_for_selector("text=Accept: 1 device done.")
    assert Device.objects.get(name="cam-berlin-2").status == DeviceStatus.ACTIVE
    shot(page, "05-devices-after-bulk")

    device = Device.objects.get(name="cam-berlin-1")
    page.goto(f"{live_server.url}/devices/{device.pk}/")
    page.wait_for_selector("[data-testid=device-charts]")
    assert page.is_visible("[data-testid=device-actions]")
    shot(page, "06-device-detail")

    # A viewer sees the same devices but none of the buttons.
    enroll(live_server.url, token, "cam-berlin-3")
    viewer = open_page("vera")
    viewer.goto(f"{live_server.url}/devices/pending/")
    viewer.wait_for_selector("tr[data-device=cam-berlin-3]")
    assert viewer.locator("button:has-text('Accept')").count() == 0
    assert viewer.locator("button:has-text('Reject')").count() == 0
    viewer.goto(f"{live_server.url}/devices/")
    assert viewer.locator("[data-testid=bulk-actions]").count() == 0
    assert viewer.locator("input[name=devices]").count() == 0
    viewer.goto(f"{live_server.url}/devices/{device.pk}/")
    assert viewer.locator("[data-testid=device-actions]").count() == 0
    assert viewer.locator("button:has-text('Disable')").count() == 0
    shot(viewer, "07-device-detail-viewer")
    viewer.goto(f"{live_server.url}/")
    shot(viewer, "08-overview-viewer")


def test_pages_render_on_a_tablet(people, open_page, live_server):
    page = open_page("ada", viewport=(820, 1180))
    for path, name in (("/", "overview"), ("/devices/", "devices"), ("/models/", "models"), ("/jobs/", "jobs"),
                       ("/deployments/", "deployments"), ("/alerts/", "alerts"), ("/audit/", "audit"),
                       ("/users/", "users"), ("/enrollment-tokens/", "tokens")):
        page.goto(f"{live_server.url}{path}")
        # No horizontal scrolling of the whole page on a tablet.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
        shot(page, f"tablet-{name}")


def test_agent_enrolls_and_appears_online_with_a_chart(people, open_page, live_server):
    """A simulated agent enrolls, sends 40 minutes of telemetry through the agent API; the beat's
    rollup and presence services run (called here with the current time, as the beat would); the
    overview counts it online and its page draws the uPlot charts from the rollups."""
    import math

    from django.utils import timezone

    from fleet import services
    from fleet.models import Device
    from fleet.telemetry.presence import evaluate_presence
    from fleet.telemetry.rollups import rollup_range

    token = services.create_enrollment_token(None, auto_accept=True, labels={"site": "lyon"}).token
    body = enroll(live_server.url, token, "edge-lyon-1")
    assert body["status"] == "active"
    now = time.time()
    samples = [{"seq": i + 1, "ts": now - 60 * (40 - i), "cpu_percent": 35 + 25 * math.sin(i / 5),
                "load_1m": 0.8, "mem_used_bytes": int((1 + i / 40) * 1024**3), "mem_total_bytes": 4 * 1024**3,
                "disk_used_bytes": 11 * 1024**3, "disk_total_bytes": 32 * 1024**3,
                "net_rx_bytes_per_s": 20000 + 500 * i, "net_tx_bytes_per_s": 5000, "temperature_c": 48 + i / 10}
               for i in range(41)]
    ack = agent_call(live_server.url, body["device_token"], "POST", "/api/v1/agent/telemetry",
                     {"samples": samples, "dropped": 0})
    assert ack["acked_seq"] == 41
    at = timezone.now()
    rollup_range(at - timedelta(hours=1), at)
    evaluate_presence(at)
    device = Device.objects.get(name="edge-lyon-1")
    assert device.presence.state == "online"

    page = open_page("otto")
    assert page.inner_text("[data-testid=count-online] .num") == "1"
    page.wait_for_selector("[data-testid=fleet-health]")
    shot(page, "10-overview-online")

    page.goto(f"{live_server.url}/devices/?presence=online")
    page.wait_for_selector("tr[data-device=edge-lyon-1]")
    shot(page, "11-devices-online")

    page.goto(f"{live_server.url}/devices/{device.pk}/")
    page.wait_for_selector("[data-chart=cpu] canvas")
    points = int(page.get_attribute("[data-chart=cpu]", "data-points"))
    assert points >= 40, points
    # The CPU lines are drawn: the canvas holds many blue pixels (#1f6feb avg, #93c5fd max; the
    # lines are anti-aliased, so any clearly blue pixel counts).
    page.wait_for_function("""() => {
        const c = document.querySelector('[data-chart=cpu] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (d[i + 3] > 100 && d[i + 2] > 200 && d[i + 2] - d[i] > 60) n++;
        return n > 200; }""", timeout=5000)
    for key in ("mem", "disk", "net", "temp"):
        assert page.locator(f"[data-chart={key}] canvas").count() >= 1, key
    shot(page, "12-device-detail-charts")


# Records what the upload form's XMLHttpRequest did, in sessionStorage so it survives the reload
# the form does once the upload succeeded.
UPLOAD_PROBE = """
(() => {
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url) {
    const xhr = this;
    const log = {url: String(url), progress: []};
    xhr.upload.addEventListener('progress', e => log.progress.push([e.loaded, e.total]));
    xhr.addEventListener('loadend', () => {
      const form = document.querySelector(`form[data-upload="${log.url}"]`);
      const bar = form && form.querySelector('progress');
      log.status = xhr.status;
      log.bar = bar ? {value: bar.value, max: bar.max, hidden: bar.hidden} : null;
      log.text = form ? form.querySelector('[data-upload-status]').textContent : null;
      const all = JSON.parse(sessionStorage.getItem('uploads') || '[]');
      all.push(log);
      sessionStorage.setItem('uploads', JSON.stringify(all));
    });
    return open.apply(this, arguments);
  };
})();
"""


def test_upload_compress_chart_deploy_and_watch_the_rollout(people, open_page, live_server, celery_worker_process,
                                                            tmp_path):
    """The operator's whole path in the browser: create a model, upload its ONNX file and a dataset
    (progress bar), run an int8-dynamic job on the real worker and watch it finish (htmx polling,
    no reload), read the variant chart with the recommended point marked, deploy to a label with a
    target preview and watch two simulated agents converge phase by phase. A viewer sees no deploy
    or rollout buttons."""
    from compression.models import CompressionJob, ModelVersion
    from fleet import services
    from fleet.deploy_tasks import advance_rollouts
    from fleet.models import Deployment
    from tests.compression.engine.models import build_digits_mlp, dataset_npz, digits_data

    onnx_path = tmp_path / "digits-mlp.onnx"
    build_digits_mlp(path=onnx_path)
    _, X_test, _, y_test = digits_data()
    npz_path = dataset_npz(tmp_path / "digits-test.npz", X_test, y_test, "x")

    page = open_page("otto")
    page.add_init_script(UPLOAD_PROBE)
    page.goto(f"{live_server.url}/models/")
    page.fill("#id_name", "digits")
    page.fill("#id_description", "8x8 digits MLP")
    page.click("[data-testid=model-form] button[type=submit]")
    page.wait_for_selector("[data-testid=upload-form]")

    # Upload the ONNX file: the progress bar fills, then the page reloads with version 1 listed.
    page.set_input_files("#upload-file", str(onnx_path))
    page.click("[data-testid=upload-form] button[type=submit]")
    page.wait_for_selector("[data-testid=version-table] >> text=v1", timeout=30000)
    page.wait_for_load_state()
    (log,) = page.evaluate("JSON.parse(sessionStorage.getItem('uploads'))")
    size = onnx_path.stat().st_size
    assert log["status"] == 201 and log["progress"], log
    assert log["progress"][-1][0] >= size, log  # multipart body: the file plus the form's fields
    assert log["bar"] == {"value": log["progress"][-1][0], "max": log["progress"][-1][1], "hidden": False}, log
    assert log["text"] == "Done.", log
    version = ModelVersion.objects.get(model__name="digits", version=1)

    page.fill("#ds-name", "digits-test")
    page.set_input_files("#ds-file", str(npz_path))
    page.click("[data-testid=dataset-form] button[type=submit]")
    page.wait_for_selector("[data-testid=dataset-table] >> text=digits-test", timeout=30000)
    shot(page, "20-model-detail")

    page.goto(f"{live_server.url}/versions/{version.pk}/")
    shot(page, "21-version-detail")

    # A compression job, run by the real Celery worker; the job page follows it without a reload.
    page.goto(f"{live_server.url}/jobs/new/?version={version.pk}")
    page.check("input[name=recipe][value=int8-dynamic]")
    page.select_option("#id_dataset", str(version.model.datasets.get().pk))
    # A toy model runs in microseconds: timer noise alone can exceed the default 5 % slack.
    page.fill("#id_latency_slack", "10")
    shot(page, "22-job-new")
    page.click("[data-testid=job-form] button[type=submit]")
    page.wait_for_selector("[data-testid=job-live]")
    page.evaluate("window.__notReloaded = true")
    shot(page, "23-job-running")
    try:
        page.wait_for_selector("[data-testid=job-live][data-status=succeeded]", timeout=120000)
    except Exception:
        job = CompressionJob.objects.get()
        pytest.fail(f"job {job.status}: {job.error}\n{job.log[-2000:]}\n"
                    f"{celery_worker_process['log'].read_text()[-3000:]}")
    assert page.evaluate("window.__notReloaded === true"), "the job page reloaded instead of polling"
    job = CompressionJob.objects.get()
    assert job.recommended_id is not None, job.report
    assert page.inner_text("[data-testid=job-live] .progress + p strong") == "100 %"

    # The variant chart: one dot per variant, the recommended one ringed.
    scatter = page.locator("[data-testid=variant-scatter]")
    scatter.scroll_into_view_if_needed()
    assert scatter.is_visible()
    marker = page.locator("[data-testid=recommended-marker]")
    assert marker.count() == 1
    assert page.locator(f"g.pt[data-variant='{job.recommended_id}'] [data-testid=recommended-marker]").count() == 1
    assert page.locator("g.pt[data-variant=original]").count() == 1
    assert "recommended" in page.inner_text("tr.recommended")
    assert page.locator("tr.recommended [data-testid=deploy-button]").count() == 1
    shot(page, "24-job-succeeded-variant-chart")
    page.click(f"tr.recommended a[href='/variants/{job.recommended_id}/']")
    page.wait_for_url(f"**/variants/{job.recommended_id}/")
    shot(page, "25-variant-detail")

    # Two agents with the label enroll; a third elsewhere does not match.
    token = services.create_enrollment_token(None, auto_accept=True, labels={"site": "berlin"}).token
    other = services.create_enrollment_token(None, auto_accept=True, labels={"site": "paris"}).token
    agents = {name: enroll(live_server.url, token, name)["device_token"] for name in ("cam-b1", "cam-b2")}
    enroll(live_server.url, other, "cam-p1")

    page.goto(f"{live_server.url}/models/{version.model_id}/")
    page.click("[data-testid=deploy-button]")
    page.wait_for_selector("[data-testid=deployment-form]")
    page.fill("#id_name", "digits to berlin")
    page.select_option("#id_target_kind", "labels")
    page.fill("#id_target_labels", "site=berlin")
    page.fill("#id_phases", "1, 100%")
    page.fill("#id_soak_seconds", "0")
    page.locator("#id_soak_seconds").dispatch_event("change")
    assert page.is_visible("#id_target_labels") and not page.is_visible("#id_target_devices")
    assert not page.is_visible("#id_pinned_variant")  # only for the pinned policy
    page.wait_for_selector("[data-testid=deployment-preview] >> text=cam-b2")
    preview = page.inner_text("[data-testid=deployment-preview]")
    assert "cam-b1" in preview and "cam-p1" not in preview, preview
    assert "original" in preview or "int8-dynamic" in preview, preview  # the variant each device gets
    shot(page, "26-deployment-new-preview")
    page.click("[data-testid=create-start]")
    page.wait_for_selector("[data-testid=deployment-state]")
    dep = Deployment.objects.get()
    assert dep.state == "active", dep.state_reason
    page.evaluate("window.__notReloaded = true")
    shot(page, "27-deployment-phase-1")

    def agents_report():
        """Each agent does what the real one does on a change: read its desired state, then
        report downloading → installed with its on-device benchmark."""
        for name, device_token in agents.items():
            state = agent_call(live_server.url, device_token, "GET", "/api/v1/agent/desired-state")
            for m in state["models"]:
                variant = m["variant"]
                if not variant or m["state"] == "installed":
                    continue
                reports = [{"report_id": f"{name}-{variant['variant_id']}-{s}", "model": m["model"],
                            "variant_id": variant["variant_id"], "state": s,
                            **({"benchmark": {"p50_ms": 0.21, "p95_ms": 0.35, "peak_rss_bytes": 48 << 20}}
                               if s == "installed" else {})}
                           for s in ("downloading", "verifying", "installed")]
                agent_call(live_server.url, device_token, "POST", "/api/v1/agent/reports", {"reports": reports})

    # The beat's rollout step runs on the worker; the page follows the phases live.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        agents_report()
        advance_rollouts.delay()
        dep.refresh_from_db()
        if dep.state != "active":
            break
        time.sleep(1)
    assert dep.state == "completed", (dep.state, dep.state_reason)
    page.wait_for_selector("#deployment-live[data-state=completed]", timeout=15000)
    assert page.evaluate("window.__notReloaded === true"), "the deployment page reloaded instead of polling"
    text = page.inner_text("#deployment-live")
    assert "cam-b1" in text and "cam-b2" in text and "cam-p1" not in text
    assert page.locator("[data-testid=phase-0]").count() == 1 and page.locator("[data-testid=phase-1]").count() == 1
    shot(page, "28-deployment-completed")

    page.goto(f"{live_server.url}/deployments/")
    shot(page, "29-deployments")

    # A viewer sees the same pages without a deploy button or rollout actions.
    viewer = open_page("vera")
    viewer.goto(f"{live_server.url}/models/{version.model_id}/")
    assert viewer.locator("[data-testid=version-table] >> text=v1").count() == 1
    assert viewer.locator("[data-testid=deploy-button]").count() == 0
    assert viewer.locator("[data-testid=upload-form]").count() == 0
    viewer.goto(f"{live_server.url}/deployments/{dep.pk}/")
    viewer.wait_for_selector("[data-testid=deployment-state]")
    assert viewer.locator("[data-testid=deployment-actions]").count() == 0
    assert viewer.locator("button:has-text('Roll back')").count() == 0
    viewer.goto(f"{live_server.url}/jobs/{job.pk}/")
    assert viewer.locator("[data-testid=recommended-marker]").count() == 1
    assert viewer.locator("[data-testid=deploy-button]").count() == 0
    viewer.goto(f"{live_server.url}/variants/{job.recommended_id}/")
    assert viewer.locator("[data-testid=deploy-button]").count() == 0
    shot(viewer, "30-job-viewer")
    response = viewer.goto(f"{live_server.url}/deployments/new/")
    assert response.status == 403
