"""The hypersphere HTML renders in a real headless Chromium with the network switched off."""

import os
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from desupcon.analysis.plots import plot_hypersphere

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--window-size=1400,800",
)


@pytest.fixture
def browser(monkeypatch):
    """Headless Chromium through the Debian chromedriver; selenium-manager never downloads anything."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:  # .ci/run installs them when it runs as root (or sudo needs no password), and says so otherwise
        pytest.skip(f"needs Debian's chromium and chromium-driver ({', '.join(missing)} missing or not executable):"
                    " apt-get install chromium chromium-driver (as root)")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in OFFLINE_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_hypersphere_renders_offline(tmp_path, browser):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    embeddings = rng.normal(size=(10, 64))[labels] + 0.3 * rng.normal(size=(300, 64))
    path = plot_hypersphere(embeddings, labels, tmp_path / "run_hypersphere.html", num_random_classes=4)
    expected_traces = 10 + 4 + 2  # the classes of each panel plus one sphere per panel
    assert (tmp_path / "plotly.min.js").exists()

    def on_graph(body):
        """Run JavaScript with ``gd`` bound to the plot's div."""
        return browser.execute_script(f"const gd = document.getElementById('run_hypersphere'); {body}")

    browser.get(path.resolve().as_uri())
    WebDriverWait(browser, 30).until(
        lambda _: on_graph(
            "return document.querySelectorAll('.gl-container').length >= 2"
            " || !!(gd && gd._fullLayout && gd._fullLayout.scene && gd._fullLayout.scene2);"
        )
    )
    assert on_graph("return typeof window.Plotly") == "object"
    assert on_graph("return gd.data.length") == expected_traces
    assert on_graph("return !!(gd._fullLayout.scene && gd._fullLayout.scene2)")
    assert on_graph("return document.querySelectorAll('.gl-container canvas').length") >= 2

    screenshot = tmp_path / "hypersphere.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000

    in_both_panels = on_graph("return gd.data.find(t => t.scene === 'scene2' && t.legendgroup).legendgroup")
    legend_toggles = browser.find_elements(By.CSS_SELECTOR, ".legend .traces .legendtoggle")
    legend_toggles[int(in_both_panels)].click()  # classes 0..9 are listed in order
    WebDriverWait(browser, 10).until(
        lambda _: on_graph(
            f"const group = gd.data.filter(t => t.legendgroup === '{in_both_panels}');"
            " return group.length === 2 && group.every(t => t.visible === 'legendonly');"
        )
    )

    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
