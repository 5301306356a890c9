"""The MLflow UI as a person sees it: a real small sweep into a tmp SQLite store, its report, `permsym ui` on
it, and Debian's headless chromium driven by selenium. Checks that the experiment opens in the model-training
view with the parent run, that expanding it lists the child runs, that a child run shows its metrics, its
per-point table and its figures, and that the report (HTML, figures embedded) is reachable from the parent run.
Screenshots go to the test's tmp dir (and to docs/screenshots/ with PERMSYM_SCREENSHOTS=1).

Needs /usr/bin/chromium and /usr/bin/chromedriver (`make test` installs them with apt-get where missing);
skipped without them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures.mlflow_helpers import free_port

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = ROOT / "docs" / "screenshots"


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("chromium / chromedriver not installed (make test installs them)")
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(DRIVER), options=o)


def test_sweep_in_the_mlflow_ui(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from sweeps.runner import run_sweep
    from sweeps.cli_ui import experiment_url
    from tracking.report import write_report
    from tracking.store import results_uri

    browser = _browser()                       # skip before the sweep when there is no browser
    res = tmp_path / "res"
    s = run_sweep({"name": "browser", "task": "toy", "resources": {"cpus": 1},
                   "grid": {"widths": [[3]], "seeds": [0, 1], "adam_steps": 300, "path_relax": False,
                            "path_points": 5}}, results_dir=res, progress=False)
    assert s["finished"] == 2
    write_report(res / "report", sweep="browser", tracking_uri=results_uri(res))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    ui = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "ui", "--results", str(res), "--port", str(port)],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def shot(name):
        browser.save_screenshot(str(shots / name))
        if os.environ.get("PERMSYM_SCREENSHOTS"):          # refresh the tracked copies on request only
            SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(shots / name, SHOTS / name)

    def text():
        return browser.find_element(By.TAG_NAME, "body").text

    def wait_text(*needles, timeout=40):
        WebDriverWait(browser, timeout).until(lambda d: all(n in text() for n in needles))

    try:
        t0 = time.time()
        while time.time() - t0 < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        exp, parent = s["experiment_id"], s["parent_run_id"]
        from mlflow import MlflowClient

        kids = [r for r in MlflowClient(results_uri(res)).search_runs([exp]) if r.data.tags.get("trial_key")]
        child = kids[0]

        # 1. the experiment, in the model-training view: the parent run; expanded, its two children
        browser.get(experiment_url(base, exp))
        wait_text("Runs", "browser", "3 matching runs")
        assert "Traces" not in text().split("Runs")[0] or "Model training" in text()
        link = browser.find_element(By.XPATH, "//a[normalize-space()='browser' and contains(@href,'/runs/')]")
        cell = link.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]")
        cell.find_element(By.CSS_SELECTOR, "button, [role='button']").click()
        wait_text(*(k.info.run_name for k in kids))
        shot("1_experiment_runs.png")

        # 2. a child run: its metrics
        browser.get(f"{base}/#/experiments/{exp}/runs/{child.info.run_id}?workflowType=machine_learning")
        wait_text(child.info.run_name, "minimum_loss", "n_points")
        browser.execute_script("arguments[0].scrollIntoView()",
                               browser.find_element(By.XPATH, "//*[not(*) and normalize-space()='minimum_loss']"))
        shot("2_child_run_metrics.png")

        # 3. its artifacts: the per-point table and a figure
        browser.get(f"{base}/#/experiments/{exp}/runs/{child.info.run_id}/artifacts?workflowType=machine_learning")
        wait_text("points.json", "figures", "trial_record.json")
        browser.find_elements(By.XPATH, "//*[normalize-space()='points.json']")[-1].click()
        wait_text("index", "n_zero", "critical")
        shot("3_child_points_table.png")
        browser.find_elements(By.XPATH, "//*[normalize-space()='figures']")[-1].click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='spectra.png']"))

        def figure_shown(d):
            if "figures/spectra.png" not in text():      # the tree may still be unfolding: click the item again
                d.find_elements(By.XPATH, "//*[normalize-space()='spectra.png']")[-1].click()
                return False
            return any(int(i.get_attribute("naturalWidth") or 0) > 600
                       for i in d.find_elements(By.CSS_SELECTOR, "img[src^='blob:']"))

        WebDriverWait(browser, 40, poll_frequency=1, ignored_exceptions=(Exception,)).until(figure_shown)
        shot("4_child_figure.png")

        # 4. the parent run's report: report/report.html, figures embedded
        browser.get(f"{base}/#/experiments/{exp}/runs/{parent}/artifacts?workflowType=machine_learning")
        browser.refresh()                  # a hash-only change keeps the previous run's artifact list
        wait_text("report", "sweep_spec.json")
        browser.find_elements(By.XPATH, "//*[normalize-space()='report']")[-1].click()
        wait_text("report.html", "report.md")
        browser.find_elements(By.XPATH, "//*[normalize-space()='report.html']")[-1].click()
        frame = WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.TAG_NAME, "iframe")))
        browser.switch_to.frame(frame)
        WebDriverWait(browser, 30).until(lambda d: "Empirical counts against the lower bound" in d.page_source)
        imgs = browser.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png;base64,']")
        assert imgs and all(int(i.get_attribute("naturalWidth")) > 200 for i in imgs)
        browser.switch_to.default_content()
        shot("5_parent_report.png")
    except Exception:
        shot("failed.png")
        raise
    finally:
        browser.quit()
        if ui.poll() is None:
            ui.send_signal(signal.SIGTERM)
            ui.wait(timeout=60)
