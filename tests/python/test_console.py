"""The web console (`broker/console/`, served at `/console/`) in a real headless chromium,
driven through selenium, against a real `magnetar standalone`.

What the console shows is checked against what the admin API answers for the same thing:
the overview's cluster, brokers and bookies; a topic's publishers, subscriptions, consumers and
backlog after a known workload from the official Python client; search; the actions (peek,
clear backlog, reset a cursor, create a tenant, a namespace, a topic) checked through the admin
API; and, with token authentication on, the sign-in form, a super-user token, and the 403
reason a role without permissions sees. Each page is saved as a PNG under
$MAGNETAR_TEST_OUTPUT/console/ (or target/test-output/console/).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pulsar
import pytest

from conftest import _track
from magnetar_process import REPO, MagnetarProcess, magnetar_bin
from test_admin import eventually, raw_get, unique
from test_tenancy import http, ok

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported by the skip below
    webdriver = None

_missing = [
    what
    for what, present in (
        ("selenium (pip install selenium==4.50.0)", webdriver is not None),
        (f"chromium at {CHROMIUM} (Debian package chromium)", os.access(CHROMIUM, os.X_OK)),
        (f"chromedriver at {CHROMEDRIVER} (Debian package chromium-driver)", os.access(CHROMEDRIVER, os.X_OK)),
    )
    if not present
]
if _missing:
    pytest.skip(f"the console tests need {', '.join(_missing)}", allow_module_level=True)

NAMESPACE = "public/default"
# Generous: a debug broker on a loaded CI machine; every wait polls and returns early.
WAIT_S = 30


def screenshot_dir() -> Path:
    root = os.environ.get("MAGNETAR_TEST_OUTPUT")
    path = (Path(root) if root else REPO / "target" / "test-output") / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="module")
def _driver() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                     "--disable-dev-shm-usage", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The console in the browser, on one broker."""

    def __init__(self, driver: WebDriver, node: MagnetarProcess) -> None:
        self.driver = driver
        self.node = node

    def open(self, route: str) -> None:
        """Shows the console at `route` (a hash route such as `#/overview`), rendered afresh."""
        url = f"{self.node.http_url}/console/{route}"
        if self.driver.current_url == url:
            self.driver.refresh()
        else:
            self.driver.get(url)

    def wait(self, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT_S) -> Any:
        """Polls `condition` until it answers something truthy. The live pages re-render parts
        of themselves, so an element that went stale, or is not there yet, means "not yet"."""
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.2,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition, message=what)  # fmt: skip

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def visible(self, css: str, what: str | None = None) -> WebElement:
        def shown(driver: WebDriver) -> WebElement | bool:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed():
                    return element
            return False

        return self.wait(shown, what or f"{css} is shown")

    def click(self, css: str) -> None:
        """Clicks the shown element matching `css`, once it is there and nothing covers it."""

        def clicked(driver: WebDriver) -> bool:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed():
                    try:
                        element.click()
                    except ElementClickInterceptedException:
                        return False
                    return True
            return False

        self.wait(clicked, f"{css} is shown and clicked")

    def type(self, css: str, text: str) -> None:
        """Replaces the text of the shown input matching `css`."""

        def typed(driver: WebDriver) -> bool:
            element = self.visible(css)
            element.clear()
            element.send_keys(text)
            return True

        self.wait(typed, f"{text!r} typed into {css}")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def table(self, table_id: str) -> list[dict[str, Any]]:
        """The rows of a console table: each cell's text and raw value, by column key."""
        return self.js(
            """
            const rows = document.querySelectorAll(`#${arguments[0]} tbody tr[data-key]`);
            return [...rows].map((tr) => {
              const row = {key: tr.dataset.key};
              for (const td of tr.children) row[td.dataset.col] = {text: td.innerText.trim(), value: td.dataset.value};
              return row;
            });
            """,
            table_id,
        )

    def crumbs(self) -> list[str]:
        return self.js("return [...document.querySelectorAll('#breadcrumbs [data-crumb]')].map((e) => e.dataset.crumb)")

    def rows_by_key(self, table_id: str) -> dict[str, dict[str, Any]]:
        return {row["key"]: row for row in self.table(table_id)}

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        """Saves the page as `<name>.png`: the whole page, or the window (for dialogs)."""
        path = screenshot_dir() / f"{name}.png"
        if full_page:
            self.js("window.scrollTo(0, 0)")
            metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
            height = max(int(metrics["cssContentSize"]["height"]), int(metrics["cssLayoutViewport"]["clientHeight"]))
            width = int(metrics["cssLayoutViewport"]["clientWidth"])
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True,
                 "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
            )  # fmt: skip
            path.write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        return path

    def script_errors(self) -> list[str]:
        """Uncaught errors the page's scripts threw since the last call (failed fetches, which
        the console shows as messages, are not errors)."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
        ]


def _console_on(driver: WebDriver, node: MagnetarProcess) -> Iterator[Console]:
    console = Console(driver, node)
    driver.get("about:blank")
    console.script_errors()  # drop earlier tests' entries
    yield console
    errors = console.script_errors()
    assert not errors, f"the console's scripts failed: {errors}"


@pytest.fixture
def console(_driver: WebDriver, magnetar: MagnetarProcess) -> Iterator[Console]:
    yield from _console_on(_driver, magnetar)


# --------------------------------------------------------------------------------------------
# Helpers


def stats_of(node: MagnetarProcess, topic: str) -> dict[str, Any]:
    """The admin API's stats of `tenant/ns/topic`."""
    return ok(node, "GET", f"/admin/v2/persistent/{topic}/stats")


def backlog_of(node: MagnetarProcess, topic: str, subscription: str) -> int:
    return stats_of(node, topic)["subscriptions"][subscription]["msgBacklog"]


def topic_route(topic: str) -> str:
    """`tenant/ns/topic` -> the console's route to it."""
    return f"#/topic/persistent/{topic}"


def cell(console: Console, table_id: str, key: str, column: str) -> str | None:
    """The raw value of one cell of a console table (None while the row is not there)."""
    return console.rows_by_key(table_id).get(key, {}).get(column, {}).get("value")


def tree(console: Console, kind: str) -> set[str]:
    """The names of the tree's rows of `kind` (tenant, namespace, topic) the search shows."""
    return set(
        console.js(
            'return [...document.querySelectorAll(`[data-test="tree-${arguments[0]}"]`)]'
            ".filter((e) => !e.hidden).map((e) => e.dataset.name)",
            kind,
        )
    )


# --------------------------------------------------------------------------------------------
# Tests


def test_topic_page_shows_what_the_stats_api_gives(
    console: Console, magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    name = unique("console-orders")
    topic = f"{NAMESPACE}/{name}"
    full = f"persistent://{topic}"
    audit = [
        client.subscribe(full, "audit", consumer_type=pulsar.ConsumerType.Shared, consumer_name=f"audit-{i}")
        for i in (1, 2)
    ]
    billing = client.subscribe(full, "billing", consumer_type=pulsar.ConsumerType.Exclusive, consumer_name="billing-1")
    producers = [client.create_producer(full, producer_name=f"{name}-p{i}", batching_enabled=False) for i in (1, 2, 3)]
    for producer in producers:
        for i in range(10):
            producer.send(f"{producer.producer_name()}-{i}".encode())
    for _ in range(10):
        billing.acknowledge(billing.receive(timeout_millis=10_000))

    def settled() -> dict[str, Any] | None:
        found = stats_of(magnetar, topic)
        subs = found["subscriptions"]
        return found if subs["audit"]["msgBacklog"] == 30 and subs["billing"]["msgBacklog"] == 20 else None

    eventually(settled, "backlogs of audit (30) and billing (20)")

    console.open(topic_route(topic))
    console.visible("#subscriptions-table")
    assert console.crumbs() == ["Tenants", "public", "default", name]

    # What the page shows equals what the stats API answers at the same moment (the page
    # polls every 2 s; rates move, these do not once the workload is done).
    def same_as_api(_: WebDriver) -> bool:
        api = stats_of(magnetar, topic)
        publishers = console.rows_by_key("publishers-table")
        if set(publishers) != {p["producerName"] for p in api["publishers"]}:
            return False
        for p in api["publishers"]:
            row = publishers[p["producerName"]]
            if (row["msgInCounter"]["value"], row["producerId"]["value"]) != (
                str(p["msgInCounter"]),
                str(p["producerId"]),
            ):
                return False
        subs = console.rows_by_key("subscriptions-table")
        if set(subs) != set(api["subscriptions"]):
            return False
        for sub_name, sub in api["subscriptions"].items():
            row = subs[sub_name]
            shown = (row["type"]["text"], row["msgBacklog"]["value"], row["unackedMessages"]["value"])
            expected = (sub["type"], str(sub["msgBacklog"]), str(sub["unackedMessages"]))
            if shown != expected or row["consumerCount"]["value"] != str(len(sub["consumers"])):
                return False
        consumers = {(r["subscription"]["text"], r["consumerName"]["text"]) for r in console.table("consumers-table")}
        expected = {(s, c["consumerName"]) for s, sub in api["subscriptions"].items() for c in sub["consumers"]}
        if consumers != expected:
            return False
        backlog = sum(sub["msgBacklog"] for sub in api["subscriptions"].values())
        return (
            console.find('[data-test="stat-backlog"]').get_attribute("data-value") == str(backlog)
            and console.find('[data-test="stat-producers"]').get_attribute("data-value") == str(len(api["publishers"]))
            and console.find('[data-test="stat-storage"]').get_attribute("data-value") == str(api["storageSize"])
        )

    console.wait(same_as_api, "the topic page shows the stats API's publishers, subscriptions and backlog")
    api = stats_of(magnetar, topic)
    assert len(api["publishers"]) == 3
    assert {s: (v["type"], v["msgBacklog"]) for s, v in api["subscriptions"].items()} == {
        "audit": ("Shared", 30),
        "billing": ("Exclusive", 20),
    }
    assert console.find('[data-test="stat-backlog"] .stat-value').text == "50"
    assert console.find('[data-test="stat-subscriptions"] .stat-sub').text == "3 consumers"

    # Sorting: numbers sort largest first, a second click reverses.
    def order() -> list[str]:
        return [row["key"] for row in console.table("subscriptions-table")]

    console.click('#subscriptions-table th[data-col="msgBacklog"]')
    console.wait(lambda d: order() == ["audit", "billing"], "sorted by backlog, descending")
    console.click('#subscriptions-table th[data-col="msgBacklog"]')
    console.wait(lambda d: order() == ["billing", "audit"], "sorted by backlog, ascending")
    assert console.find('#subscriptions-table th[data-col="msgBacklog"]').get_attribute("aria-sort") == "ascending"

    # The live charts: samples every 2 s, drawn as smooth lines with axes and a legend.
    before = int(console.find("#chart-rates").get_attribute("data-points"))
    for i in range(20):
        producers[i % 3].send(f"more-{i}".encode())
    time.sleep(6.5)  # the one fixed wait: three poll intervals of the live charts
    after = int(console.find("#chart-rates").get_attribute("data-points"))
    assert after >= before + 2, f"the chart took {after - before} samples in 6.5 s"
    for chart, series in (("chart-rates", ("in", "out")), ("chart-backlog", ("total", "sub:audit", "sub:billing"))):
        # Read in one go: the chart redraws itself every 2 s.
        drawn = console.js(
            """
            const svg = document.getElementById(arguments[0]);
            return {
              lines: Object.fromEntries(
                [...svg.querySelectorAll('path.line')]
                  .map((p) => [p.dataset.series, [Number(p.dataset.n), p.getAttribute('d')]]),
              ),
              ticks: [...svg.querySelectorAll('text.tick')].map((t) => t.textContent),
            };
            """,
            chart,
        )
        for key in series:
            points, path = drawn["lines"][key]
            assert points >= 3, f"{chart} {key}: {points} points"
            assert path.count("C") >= 2, f"{chart} {key}: a smooth curve through the samples: {path}"
        assert len(drawn["ticks"]) >= 5, f"{chart} has axis labels: {drawn['ticks']}"
    legend = console.find('[data-test="chart-backlog-legend"]').text
    assert "audit" in legend and "billing" in legend and "total" in legend
    api_backlog = sum(sub["msgBacklog"] for sub in stats_of(magnetar, topic)["subscriptions"].values())
    console.wait(
        lambda d: console.find('[data-test="chart-backlog-legend"] [data-series="total"] b').text == str(api_backlog),
        "the backlog chart's latest total",
    )
    console.screenshot("topic")

    for consumer in [*audit, billing]:
        consumer.close()
    for producer in producers:
        producer.close()


def test_search_filters_topics(console: Console, magnetar: MagnetarProcess) -> None:
    prefix = unique("find")
    names = [f"{prefix}-alpha", f"{prefix}-alphabet", f"{prefix}-beta"]
    for name in names:
        ok(magnetar, "PUT", f"/admin/v2/persistent/{NAMESPACE}/{name}")
    every_topic = {
        f"persistent://{ns}/{t.split('/')[-1]}"
        for tenant in ok(magnetar, "GET", "/admin/v2/tenants")
        for ns in ok(magnetar, "GET", f"/admin/v2/namespaces/{tenant}")
        for t in ok(magnetar, "GET", f"/admin/v2/persistent/{ns}")
        if "-partition-" not in t
    }

    console.open("#/tenants")
    console.visible("#search")

    def shown(kind: str) -> set[str]:
        return tree(console, kind)

    console.wait(lambda d: {f"persistent://{NAMESPACE}/{n}" for n in names} <= shown("topic"), "every topic listed")
    assert every_topic <= shown("topic")

    console.type("#search", f"{prefix}-alpha")
    console.wait(
        lambda d: shown("topic") == {f"persistent://{NAMESPACE}/{prefix}-{n}" for n in ("alpha", "alphabet")},
        "only the alpha topics",
    )
    assert shown("namespace") == {NAMESPACE} and shown("tenant") == {"public"}
    assert console.find("#search-summary").text == "1 tenant · 1 namespace · 2 topics match"
    marks = console.js(
        "return [...document.querySelectorAll('[data-test=\"tree-topic\"]:not([hidden]) mark')]"
        ".map((m) => m.textContent)"
    )
    assert marks == [f"{prefix}-alpha", f"{prefix}-alpha"]
    console.screenshot("tenants")

    console.find("#search").send_keys("b")
    console.wait(lambda d: shown("topic") == {f"persistent://{NAMESPACE}/{prefix}-alphabet"}, "only alphabet")
    console.find("#search").send_keys("zz-nothing")
    console.wait(lambda d: not shown("topic") and not shown("tenant"), "nothing")
    assert console.find("#search-empty").is_displayed()
    # A namespace's name shows it with all its topics.
    console.type("#search", NAMESPACE)
    ours = {f"persistent://{NAMESPACE}/{n}" for n in names}
    console.wait(lambda d: shown("topic") >= ours, "public/default's topics")
    console.find("#search").clear()
    console.find("#search").send_keys(" ")
    console.wait(lambda d: shown("topic") >= every_topic, "everything again")

    # The tenant page lists its namespaces; the namespace page filters its topics.
    console.open("#/t/public")
    console.wait(lambda d: "default" in console.rows_by_key("namespaces-table"), "public's namespaces")
    console.wait(lambda d: cell(console, "namespaces-table", "default", "bundles") not in (None, ""), "bundle counts")
    console.screenshot("namespaces")
    console.open(f"#/ns/{NAMESPACE}")
    console.wait(lambda d: ours <= set(console.rows_by_key("topics-table")), "the topics")
    console.type("#topic-search", "alphabet")
    alphabet = {f"persistent://{NAMESPACE}/{prefix}-alphabet"}
    console.wait(lambda d: set(console.rows_by_key("topics-table")) == alphabet, "filtered")
    console.find("#topic-search").clear()
    console.find("#topic-search").send_keys(prefix)
    console.wait(lambda d: len(console.rows_by_key("topics-table")) == 3, "the three topics")
    console.screenshot("topics")


def test_peek_clear_backlog_and_reset_cursor(
    console: Console, magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    name = unique("console-work")
    topic = f"{NAMESPACE}/{name}"
    full = f"persistent://{topic}"
    client.subscribe(full, "work", consumer_type=pulsar.ConsumerType.Shared).close()
    producer = client.create_producer(full, producer_name=f"{name}-producer", batching_enabled=False)
    for i in range(12):
        producer.send(f"payload-{i} ✓".encode(), properties={"index": str(i)})
    binary = bytes([0, 1, 2, 0xFF, 0x10])
    producer.send(binary)
    producer.close()
    eventually(lambda: backlog_of(magnetar, topic, "work") == 13, "13 messages in the backlog")
    ids = []
    for position in range(1, 14):
        status, headers, _ = raw_get(magnetar, f"/admin/v2/persistent/{topic}/subscription/work/position/{position}")
        assert status == 200
        ids.append(headers["x-pulsar-message-id"])

    console.open(topic_route(topic))
    console.wait(lambda d: cell(console, "subscriptions-table", "work", "msgBacklog") == "13", "work's backlog")

    # Peek: the ids, publish times, properties and payloads, text or hex.
    console.click('[data-test="peek"][data-sub="work"]')
    console.visible("#peek-count")
    console.wait(lambda d: console.find("#peek-results").get_attribute("data-state") == "done", "the first peek")
    assert len(console.driver.find_elements(By.CSS_SELECTOR, '[data-test="peek-message"]')) == 10
    console.type("#peek-count", "13")
    console.click("#peek-go")
    console.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-test="peek-message"]')) == 13, "13 messages")
    messages = console.js(
        """
        return [...document.querySelectorAll('[data-test="peek-message"]')].map((m) => ({
          id: m.querySelector('.msg-id').textContent,
          time: m.querySelector('[data-test="msg-time"]').textContent,
          props: [...m.querySelectorAll('.prop')].map((p) => [...p.children].map((c) => c.textContent)),
          mode: m.querySelector('[data-test="payload"]').dataset.mode,
          payload: m.querySelector('[data-test="payload"]').textContent,
        }));
        """
    )
    assert [m["id"] for m in messages] == ids
    for i, message in enumerate(messages[:12]):
        assert message["mode"] == "text"
        assert message["payload"] == f"payload-{i} ✓"
        assert message["props"] == [["index", str(i)]]
        assert message["time"].startswith("published 20")
    assert messages[12]["mode"] == "hex"
    assert "00 01 02 ff 10" in messages[12]["payload"]
    console.screenshot("peek", full_page=False)
    # The hex view of a text message.
    first = console.driver.find_elements(By.CSS_SELECTOR, '[data-test="peek-message"]')[0]
    first.find_element(By.CSS_SELECTOR, '[data-test="as-hex"]').click()
    hex_text = first.find_element(By.CSS_SELECTOR, '[data-test="payload"]').get_attribute("textContent")
    assert hex_text.startswith("00000000  70 61 79 6c 6f 61 64 2d"), hex_text
    console.click("#peek-close")

    # Clear backlog asks first; cancelling changes nothing.
    console.click('[data-test="clear"][data-sub="work"]')
    console.visible("#confirm-cancel")
    assert "work" in console.find("#dialog").text
    console.click("#confirm-cancel")
    console.wait(lambda d: not console.find("#dialog").is_displayed(), "the dialog closed")
    assert backlog_of(magnetar, topic, "work") == 13
    console.click('[data-test="clear"][data-sub="work"]')
    console.click("#confirm-ok")
    eventually(lambda: backlog_of(magnetar, topic, "work") == 0, "the backlog cleared")
    console.wait(lambda d: cell(console, "subscriptions-table", "work", "msgBacklog") == "0", "the page shows 0")

    # Reset to a time: 10 minutes ago brings every message back.
    console.click('[data-test="reset"][data-sub="work"]')
    console.visible("#reset-minutes")
    assert console.find("#reset-mode-time").is_selected()
    console.type("#reset-minutes", "10")
    console.click("#reset-go")
    eventually(lambda: backlog_of(magnetar, topic, "work") == 13, "the backlog back after a reset to 10 minutes ago")
    console.wait(lambda d: cell(console, "subscriptions-table", "work", "msgBacklog") == "13", "the page shows 13")

    # Reset to a message id: that message is the next one delivered.
    console.click('[data-test="reset"][data-sub="work"]')
    console.click("#reset-mode-id")
    console.type("#reset-msgid", ids[5])
    console.click("#reset-go")
    eventually(lambda: backlog_of(magnetar, topic, "work") == 8, "the backlog from the 6th message")
    # A malformed id is refused before any call.
    console.click('[data-test="reset"][data-sub="work"]')
    console.click("#reset-mode-id")
    console.type("#reset-msgid", "not-an-id")
    console.click("#reset-go")
    assert "ledger:entry" in console.visible("#dialog-error").text
    console.click("#reset-cancel")
    assert backlog_of(magnetar, topic, "work") == 8


def test_overview_shows_the_cluster_brokers_and_bookies(console: Console, magnetar: MagnetarProcess) -> None:
    clusters = ok(magnetar, "GET", "/admin/v2/clusters")
    cluster = "standalone"
    assert cluster in clusters
    brokers = ok(magnetar, "GET", f"/admin/v2/brokers/{cluster}")
    leader = ok(magnetar, "GET", "/admin/v2/brokers/leaderBroker")["brokerId"]
    bookies = ok(magnetar, "GET", "/admin/v2/bookies/all")["bookies"]
    assert brokers and bookies
    report = ok(magnetar, "GET", "/admin/v2/broker-stats/load-report")

    console.open("#/overview")
    console.wait(lambda d: console.find("#cluster-name").get_attribute("data-cluster") == cluster, "the cluster name")
    assert console.find("#cluster-name").text == f"cluster {cluster}"
    assert console.crumbs() == ["Overview"]

    shown = console.wait(lambda d: console.rows_by_key("ov-brokers") or None, "the brokers table")
    assert set(shown) == set(brokers)
    for broker, row in shown.items():
        assert (row["leader"]["value"] == "leader") == (broker == leader)
    leader_row = console.find(f'#ov-brokers tr[data-key="{leader}"]')
    assert leader_row.find_element(By.CSS_SELECTOR, '[data-test="leader"]').text == "★ leader"
    mine = shown[f"127.0.0.1:{magnetar.http_port}"]
    assert mine["health"]["text"] == "healthy"

    shown = console.wait(lambda d: console.rows_by_key("ov-bookies") or None, "the bookies table")
    assert set(shown) == {bookie["bookieId"] for bookie in bookies}
    for bookie in bookies:
        row = shown[bookie["bookieId"]]
        assert row["address"]["text"] == bookie["address"]
        assert row["tls"]["text"] == ("yes" if bookie["tls"] else "no")
        # state (or readOnly), freeSpace and totalSpace when the broker reports them, a dash
        # otherwise.
        if "state" in bookie:
            assert row["state"]["text"] == bookie["state"]
        elif "readOnly" in bookie:
            assert row["state"]["text"] == ("read-only" if bookie["readOnly"] else "read-write")
        else:
            assert row["state"]["text"] == "—"
        # Free space moves as the broker writes: it matches the API's within a margin.
        slack = max(64 << 20, bookie.get("totalSpace", 0) // 100)
        for key, margin in (("totalSpace", 0), ("freeSpace", slack)):
            if key in bookie:
                assert abs(int(row[key]["value"]) - bookie[key]) <= margin, (key, row[key], bookie[key])
            else:
                assert row[key]["text"] == "—"
        if "freeSpace" in bookie and "totalSpace" in bookie and bookie["totalSpace"] > 0:
            used = (bookie["totalSpace"] - bookie["freeSpace"]) / bookie["totalSpace"]
            assert abs(float(row["used"]["value"]) - used) <= 0.01
            assert row["used"]["text"].endswith("%")
            assert console.find(f'#ov-bookies tr[data-key="{bookie["bookieId"]}"] .diskbar-fill').is_displayed()

    shown = console.wait(lambda d: console.rows_by_key("ov-clusters") or None, "the clusters table")
    assert set(shown) == set(clusters)
    service_url = ok(magnetar, "GET", f"/admin/v2/clusters/{cluster}")["serviceUrl"]
    assert shown[cluster]["serviceUrl"]["text"] == service_url

    boundaries = ok(magnetar, "GET", f"/admin/v2/namespaces/{NAMESPACE}/bundles")["boundaries"]
    expected = {f"{NAMESPACE}/{a}_{b}" for a, b in zip(boundaries, boundaries[1:])}
    shown = console.wait(lambda d: console.rows_by_key("ov-bundles") or None, "the bundles table")
    assert expected <= set(shown)
    # What this broker served before the page loaded is named as its owner (a bundle, once
    # owned, stays owned here: nothing unloads it).
    for bundle in report["bundles"]:
        if bundle["bundle"] in shown:
            assert shown[bundle["bundle"]]["owner"]["text"] == report["broker"]
    console.screenshot("overview")


def test_create_tenant_namespace_and_topics_from_the_console(console: Console, magnetar: MagnetarProcess) -> None:
    tenant = f"console-{uuid.uuid4().hex[:8]}"
    try:
        console.open("#/tenants")
        console.click("#new-tenant")
        console.type("#tenant-name", tenant)
        console.type("#tenant-roles", "ops, auditors")
        console.visible('#tenant-clusters input[data-cluster="standalone"]')
        assert console.find('#tenant-clusters input[data-cluster="standalone"]').is_selected()
        console.click("#dialog-submit")
        eventually(lambda: http(magnetar, "GET", f"/admin/v2/tenants/{tenant}")[0] == 200, "the tenant created")
        status, info = http(magnetar, "GET", f"/admin/v2/tenants/{tenant}")
        assert info == {"adminRoles": ["auditors", "ops"], "allowedClusters": ["standalone"]}
        console.wait(lambda d: tenant in tree(console, "tenant"), "the new tenant listed")

        # The same again: the server's reason (409) shows in the dialog.
        status, answer = http(magnetar, "PUT", f"/admin/v2/tenants/{tenant}", {"allowedClusters": ["standalone"]})
        assert status == 409
        console.click("#new-tenant")
        console.type("#tenant-name", tenant)
        console.visible('#tenant-clusters input[data-cluster="standalone"]')
        console.click("#dialog-submit")
        assert console.visible("#dialog-error").text == f"Error 409: {answer['reason']}"
        console.click("#dialog-cancel")

        console.open(f"#/t/{tenant}")
        console.click("#new-namespace")
        console.type("#ns-name", "app")
        console.type("#ns-bundles", "2")
        console.click("#dialog-submit")
        console.wait(lambda d: d.current_url.endswith(f"#/ns/{tenant}/app"), "the namespace page")
        policies = ok(magnetar, "GET", f"/admin/v2/namespaces/{tenant}/app")
        assert policies["bundles"]["numBundles"] == 2

        console.click("#new-topic")
        console.type("#topic-name", "plain")
        console.click("#dialog-submit")
        console.wait(lambda d: d.current_url.endswith(topic_route(f"{tenant}/app/plain")), "the topic page")
        assert f"persistent://{tenant}/app/plain" in ok(magnetar, "GET", f"/admin/v2/persistent/{tenant}/app")
        console.visible("#subscriptions-table")

        console.open(f"#/ns/{tenant}/app")
        console.click("#new-topic")
        console.type("#topic-name", "parted")
        console.type("#topic-partitions", "3")
        console.click("#dialog-submit")
        console.wait(
            lambda d: d.current_url.endswith(topic_route(f"{tenant}/app/parted")), "the partitioned topic's page"
        )
        assert ok(magnetar, "GET", f"/admin/v2/persistent/{tenant}/app/parted/partitions") == {"partitions": 3}
        console.visible('[data-test="partitioned-badge"]')
        partitioned = ok(magnetar, "GET", f"/admin/v2/persistent/{tenant}/app/parted/partitioned-stats")
        partitions = set(partitioned["partitions"])
        console.wait(lambda d: set(console.rows_by_key("partitions-table")) == partitions, "a row per partition")

        console.open(f"#/ns/{tenant}/app")
        plain, parted = f"persistent://{tenant}/app/plain", f"persistent://{tenant}/app/parted"
        console.wait(
            lambda d: set(console.rows_by_key("topics-table")) == {plain, parted}, "both topics, partitions folded"
        )
        console.wait(
            lambda d: "3 partitions" in console.rows_by_key("topics-table")[parted]["short"]["text"], "the count"
        )
    finally:
        http(magnetar, "DELETE", f"/admin/v2/tenants/{tenant}?force=true")


def test_partitioned_topic_shows_each_partition_and_acts_on_all(
    console: Console, magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    name = unique("console-parted")
    topic = f"{NAMESPACE}/{name}"
    full = f"persistent://{topic}"
    ok(magnetar, "PUT", f"/admin/v2/persistent/{topic}/partitions", 3)
    client.subscribe(full, "s", consumer_type=pulsar.ConsumerType.Shared).close()
    producer = client.create_producer(
        full, batching_enabled=False, message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution
    )
    sent = {f"event-{i}" for i in range(12)}
    for body in sorted(sent):
        producer.send(body.encode())

    def partition_backlogs() -> dict[str, int]:
        found = ok(magnetar, "GET", f"/admin/v2/persistent/{topic}/partitioned-stats?perPartition=true")
        return {
            partition: sum(sub["msgBacklog"] for sub in stats["subscriptions"].values())
            for partition, stats in found["partitions"].items()
        }

    eventually(lambda: sum(partition_backlogs().values()) == 12, "12 messages over the partitions")
    console.open(topic_route(topic))
    console.visible('[data-test="partitioned-badge"]')

    def same_as_api(_: WebDriver) -> bool:
        shown = {
            key: int(row["backlog"]["value"] or -1) for key, row in console.rows_by_key("partitions-table").items()
        }
        backlogs = partition_backlogs()
        total = console.rows_by_key("subscriptions-table").get("s", {}).get("msgBacklog", {}).get("value")
        return shown == backlogs and total == str(sum(backlogs.values()))

    console.wait(same_as_api, "each partition's backlog as partitioned-stats gives it")
    assert len(console.rows_by_key("publishers-table")) == 3, "the partitioned producer: one per partition"

    # Peek reads every partition; clear and reset act on every partition.
    console.click('[data-test="peek"][data-sub="s"]')
    console.type("#peek-count", "20")
    console.click("#peek-go")
    console.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-test="peek-message"]')) == 12, "12 messages")
    payloads = console.js("return [...document.querySelectorAll('[data-test=\"payload\"]')].map((p) => p.textContent)")
    assert set(payloads) == sent
    console.click("#peek-close")
    console.click('[data-test="clear"][data-sub="s"]')
    console.click("#confirm-ok")
    eventually(lambda: set(partition_backlogs().values()) == {0}, "every partition cleared")
    console.click('[data-test="reset"][data-sub="s"]')
    console.type("#reset-minutes", "5")
    console.click("#reset-go")
    eventually(lambda: sum(partition_backlogs().values()) == 12, "every partition back")
    console.wait(same_as_api, "the page shows the backlog back")

    # "Reset here" on partition 0's second message: only that partition moves, by one.
    first_partition = f"{full}-partition-0"
    before = partition_backlogs()[first_partition]
    assert before >= 2
    console.click('[data-test="peek"][data-sub="s"]')
    console.wait(lambda d: console.find("#peek-results").get_attribute("data-state") == "done", "the peek")
    ids = console.js("return [...document.querySelectorAll('[data-test=\"peek-message\"]')].map((m) => m.dataset.id)")
    second = [i for i in ids if i.endswith(":0")][1]
    console.click(f'[data-test="peek-message"][data-id="{second}"] [data-test="reset-here"]')
    assert console.visible("#reset-msgid").get_attribute("value") == second
    assert console.find("#reset-mode-id").is_selected()
    console.click("#reset-go")
    eventually(lambda: partition_backlogs()[first_partition] == before - 1, "partition 0 from its second message")
    assert sum(partition_backlogs().values()) == 11
    console.wait(lambda d: cell(console, "subscriptions-table", "s", "msgBacklog") == "11", "the page shows 11")
    console.wait(lambda d: int(console.find("#chart-backlog").get_attribute("data-points")) >= 3, "backlog samples")
    console.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-test="toast"]'), "the notices gone")
    console.screenshot("partitioned-topic")
    producer.close()


# --------------------------------------------------------------------------------------------
# Token authentication


def authed(
    node: MagnetarProcess, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """One admin call with a bearer token: (status, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(node.http_url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            text = answer.read().decode()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text) if text else None


@pytest.fixture(scope="module")
def _secure_node() -> Iterator[tuple[MagnetarProcess, Path]]:
    """A standalone with token authentication and authorization on and no anonymous role, as
    test_security.py configures one (Pulsar's standalone.conf keys)."""
    from test_security import run

    with tempfile.TemporaryDirectory(prefix="magnetar-console-auth-") as workdir:
        root = Path(workdir)
        secret = root / "secret.key"
        run(magnetar_bin(), "tokens", "create-secret-key", "--output", secret)
        conf = root / "standalone.conf"
        conf.write_text(
            "\n".join([
                "authenticationEnabled=true",
                "authenticationProviders=org.apache.pulsar.broker.authentication.AuthenticationProviderToken",
                f"tokenSecretKey=file://{secret}",
                "authorizationEnabled=true",
                "superUserRoles=superUser",
                "",
            ])
        )  # fmt: skip
        node = MagnetarProcess(magnetar_bin(), root, "console-auth", extra_args=["--config", str(conf)])
        try:
            node.start()
            yield node, secret
        finally:
            node.stop()


@pytest.fixture
def secure_console(
    request: pytest.FixtureRequest, _driver: WebDriver, _secure_node: tuple[MagnetarProcess, Path]
) -> Iterator[tuple[Console, Path]]:
    node, secret = _secure_node
    _track(request, node)
    for console in _console_on(_driver, node):
        yield console, secret


def test_token_sign_in_super_user_and_a_role_without_permissions(secure_console: tuple[Console, Path]) -> None:
    from test_security import token

    console, secret = secure_console
    node = console.node
    super_token = token("superUser", secret)
    nobody = token("nobody", secret)
    acme_admin = token("acme-admin", secret)
    status, answer = authed(node, "GET", "/admin/v2/clusters")
    assert status == 401
    unauthenticated_reason = answer["reason"]
    acme = {"adminRoles": ["acme-admin"], "allowedClusters": ["standalone"]}
    assert authed(node, "PUT", "/admin/v2/tenants/acme", super_token, acme)[0] == 204
    assert authed(node, "PUT", "/admin/v2/namespaces/acme/app", super_token)[0] == 204

    # No token: the console asks for one, with the broker's reason.
    console.open("#/overview")
    console.visible("#login-token")
    assert console.visible("#login-reason").text == f"The broker asks for a token: {unauthenticated_reason}"
    console.screenshot("login", full_page=False)

    # A token the broker refuses: asked again, with the reason.
    console.type("#login-token", "not-a-token")
    console.click("#login-submit")
    console.wait(lambda d: console.find("#login-reason").text.startswith("The broker refused this token:"), "refused")
    assert console.find("#login").is_displayed()

    # The super-user sees everything.
    console.type("#login-token", super_token)
    console.click("#login-submit")
    console.wait(lambda d: not console.find("#login").is_displayed(), "signed in")
    assert console.visible("#whoami").text == "role superUser"
    shown = console.wait(lambda d: console.rows_by_key("ov-brokers") or None, "the brokers table")
    assert set(shown) == set(authed(node, "GET", "/admin/v2/brokers/standalone", super_token)[1])
    console.wait(lambda d: console.rows_by_key("ov-bookies") or None, "the bookies table")
    assert console.js("return sessionStorage.getItem('magnetar.console.token')") == super_token
    console.open("#/tenants")
    console.wait(lambda d: tree(console, "tenant") == {"acme"}, "the tenants")

    # A role without permissions: the 403 and its reason.
    console.click("#logout")
    console.wait(lambda d: console.js("return sessionStorage.getItem('magnetar.console.token')") is None, "signed out")
    console.visible("#login-token")  # the page asks again once a call answers 401
    console.type("#login-token", nobody)
    console.click("#login-submit")
    status, answer = authed(node, "GET", "/admin/v2/tenants", nobody)
    assert status == 403
    console.open("#/tenants")
    forbidden = console.visible('[data-test="forbidden"]')
    assert forbidden.find_element(By.CSS_SELECTOR, '[data-test="reason"]').text == answer["reason"]
    assert "Not allowed" in forbidden.text
    console.open("#/overview")
    console.visible('#ov-brokers-card [data-test="forbidden"]')
    console.screenshot("forbidden")

    # A tenant's admin: their tenant, and nothing else.
    console.click('#ov-brokers-card [data-test="forbidden"] button')
    console.type("#login-token", acme_admin)
    console.click("#login-submit")
    console.open("#/t/acme")
    console.wait(lambda d: "app" in console.rows_by_key("namespaces-table"), "acme's namespaces")
    console.click("#new-namespace")
    console.type("#ns-name", "made-by-admin")
    console.click("#dialog-submit")
    console.wait(lambda d: d.current_url.endswith("#/ns/acme/made-by-admin"), "the new namespace")
    assert "acme/made-by-admin" in authed(node, "GET", "/admin/v2/namespaces/acme", super_token)[1]
    status, answer = authed(node, "PUT", "/admin/v2/tenants/other", acme_admin, {"allowedClusters": ["standalone"]})
    assert status == 403
    console.open("#/tenants")
    console.visible('[data-test="forbidden"]')
    console.click("#new-tenant")
    console.type("#tenant-name", "other")
    console.click("#dialog-submit")
    assert console.visible("#dialog-error").text == f"Not allowed: {answer['reason']}"
    console.click("#dialog-cancel")
    assert authed(node, "GET", "/admin/v2/tenants/other", super_token)[0] == 404
