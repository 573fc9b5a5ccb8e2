#!/usr/bin/env python3
"""Magnetar's chaos harness: a cluster of real processes, each in its own network namespace,
a keyed workload through real clients, faults injected at random from a printed seed, and a
checker that reads everything back.

    sudo .venv/bin/python tests/chaos/chaos.py --seed 7 --faults 100 --json chaos.json

The cluster: three etcd members, three bookies and two brokers, each process in a network
namespace of its own joined to a bridge in the root namespace by a veth pair (subnet
10.77.N.0/24); every bookie's data dir is a small loop-mounted ext4 file system. The
workload runs in the root namespace: the Rust client (client/examples/chaos_worker.rs) and
the official Python client (worker.py) produce keyed messages to a topic in a namespace with
deduplication on (named producers) and one without, and consume them on Exclusive, Failover,
Shared and Key_Shared subscriptions, acknowledging as they go.

Faults, one at a time, chosen by a random generator seeded with --seed (printed first, so any
run can be replayed):

  kill          kill -9 of any process, restarted after a moment
  pause         SIGSTOP of any process for longer than its session timeout, then SIGCONT
  broker_etcd   a broker cut off from every etcd member, not from clients and bookies
  bookie_broker a bookie cut off from the brokers (not from etcd)
  disk_full     a bookie's file system filled up, then freed
  etcd_member   an etcd member isolated from everything (link down), then back

After each fault heals, processes that exited (a broker that lost its session stops, as
Pulsar's do) are restarted, and the harness waits until every producer had a receipt and
every subscription a delivery after the heal: the recovery time. At the end producers stop,
consumers drain, and the checker reports, as JSON (--json) and a summary on stdout:
messages acknowledged to producers, lost (acknowledged, never delivered to a subscription),
duplicated (stored twice; must be 0 with deduplication on), reordered per key (Exclusive,
Failover, Key_Shared), redelivered after an acknowledgement that the subscription had
persisted (its persistedMarkDeletePosition, polled every second, was past the message), and
the recovery time of each fault. Exit status: 0 when the checks hold, 1 when one fails, 2
for bad usage or a harness that could not run.

Needs root (namespaces, mounts), /usr/bin/etcd, and the built binaries: target/<profile>/
magnetar and target/<profile>/examples/chaos_worker (cargo build --workspace --all-targets).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CLUSTER = "chaos"
FAULT_KINDS = ("kill", "pause", "broker_etcd", "bookie_broker", "disk_full", "etcd_member")
ORDERED_TYPES = ("Exclusive", "Failover", "Key_Shared")
BROKER_SESSION_MS = 10000
BOOKIE_SESSION_S = 10  # bookie/src/node.rs REGISTRATION_TTL
STARTUP_TIMEOUT = 90.0
RECOVERY_TIMEOUT = 120.0
# A delivery counts against a persisted ack only when it came this long after the poll that
# saw the ack persisted (a message already on its way when the ack landed is not counted).
PERSISTED_ACK_MARGIN = 2.0
DISK_MB = 192


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    if not quiet and done.returncode != 0:
        log(f"warning: {' '.join(args)}: {done.stderr.strip()}")
    return done


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgrp()  # Ctrl-C in the terminal goes to the harness only; it stops the rest


# ---------------------------------------------------------------------------------------------
# The network: one namespace per process, veth pairs on a bridge


class Network:
    def __init__(self, tag: str) -> None:
        self.tag = tag  # short, unique: names of links must fit 15 characters
        self.bridge = f"{tag}br"
        self.subnet = self._free_subnet()
        self.namespaces: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.host_links: dict[str, str] = {}
        self.blocks: set[tuple[str, str]] = set()

    @staticmethod
    def _free_subnet() -> int:
        used = run("ip", "-4", "-o", "addr", "show").stdout
        for third in range(1, 250):
            if f" 10.77.{third}." not in used:
                return third
        raise RuntimeError("no free 10.77.N.0/24 subnet")

    def create(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"10.77.{self.subnet}.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add(self, name: str, index: int) -> str:
        ns = f"{self.tag}-{name}"
        address = f"10.77.{self.subnet}.{10 + index}"
        host, inner = f"{self.tag}h{index}", f"{self.tag}n{index}"
        run("ip", "netns", "add", ns)
        self.namespaces[name] = ns
        run("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
        self.host_links[name] = host
        run("ip", "link", "set", inner, "netns", ns)
        run("ip", "link", "set", host, "master", self.bridge)
        run("ip", "link", "set", host, "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", inner)
        run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
        self.addresses[name] = address
        return address

    def isolate(self, name: str) -> None:
        run("ip", "link", "set", self.host_links[name], "down")

    def rejoin(self, name: str) -> None:
        run("ip", "link", "set", self.host_links[name], "up")

    def block(self, a: str, b: str) -> None:
        """Drops every packet between a and b (both ways), silently, as a partition does."""
        for here, there in ((a, b), (b, a)):
            run("ip", "netns", "exec", self.namespaces[here], "ip", "route", "add", "blackhole",
                f"{self.addresses[there]}/32")
        self.blocks.add((a, b))

    def unblock(self, a: str, b: str) -> None:
        for here, there in ((a, b), (b, a)):
            run("ip", "netns", "exec", self.namespaces[here], "ip", "route", "del", "blackhole",
                f"{self.addresses[there]}/32", check=False, quiet=True)
        self.blocks.discard((a, b))

    def destroy(self) -> None:
        for name, ns in self.namespaces.items():
            run("ip", "netns", "del", ns, check=False, quiet=True)
        for host in self.host_links.values():
            run("ip", "link", "del", host, check=False, quiet=True)
        run("ip", "link", "del", self.bridge, check=False, quiet=True)


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Node:
    name: str
    kind: str  # etcd, bookie, broker
    address: str
    dir: Path
    command: list[str]
    ns: str = ""
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    starts: int = 0
    exits: list[dict] = field(default_factory=list)
    paused: bool = False
    mount: Path | None = None
    start_offset: int = 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running(), f"{self.name} already runs"
        self.starts += 1
        self.log_path = self.dir / f"{self.name}.log"
        self.start_offset = self.log_size()
        with open(self.log_path, "ab") as out:
            out.write(f"==== start {self.starts} at {time.time():.3f}: {' '.join(self.command)}\n".encode())
            out.flush()
            env = dict(os.environ, RUST_LOG=os.environ.get("CHAOS_RUST_LOG", "info"), RUST_BACKTRACE="1")
            env.pop("MAGNETAR_METADATA_URL", None)
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *self.command],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent, cwd=self.dir,
            )  # fmt: skip
        self.paused = False

    def log_since(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except (OSError, AttributeError):
            return 0

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.paused = False


def http_status(url: str, timeout: float = 3.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return 0


def http_json(method: str, url: str, body: object = None, timeout: float = 10.0) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read()
            return answer.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError):
        return 0, None


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def log_time(line: str) -> float | None:
    match = LOG_TIME.match(strip_ansi(line))
    if not match:
        return None
    stamp = match.group(1)
    whole, _, fraction = stamp.partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0." + fraction)


class Cluster:
    def __init__(self, workdir: Path, binary: Path, tag: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.net = Network(tag)
        self.nodes: dict[str, Node] = {}
        self.mounts: list[Path] = []

    @property
    def etcds(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "etcd"]

    @property
    def bookies(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "bookie"]

    @property
    def brokers(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "broker"]

    def service_url(self) -> str:
        return "pulsar://" + ",".join(f"{b.address}:6650" for b in self.brokers)

    def http(self, broker: Node) -> str:
        return f"http://{broker.address}:8080"

    def build(self) -> None:
        self.net.create()
        names = ["etcd-1", "etcd-2", "etcd-3", "bookie-1", "bookie-2", "bookie-3", "broker-1", "broker-2"]
        for index, name in enumerate(names):
            directory = self.workdir / name
            directory.mkdir(parents=True)
            address = self.net.add(name, index)
            kind = name.split("-")[0]
            node = Node(name, kind, address, directory, [], ns=self.net.namespaces[name])
            self.nodes[name] = node
        peers = ",".join(f"{e.name}=http://{e.address}:2380" for e in self.etcds)
        etcd_urls = ",".join(f"{e.address}:2379" for e in self.etcds)
        for node in self.etcds:
            data = node.dir / "data"
            node.command = [
                shutil.which("etcd") or "/usr/bin/etcd", "--name", node.name, "--data-dir", str(data),
                "--listen-client-urls", f"http://{node.address}:2379",
                "--advertise-client-urls", f"http://{node.address}:2379",
                "--listen-peer-urls", f"http://{node.address}:2380",
                "--initial-advertise-peer-urls", f"http://{node.address}:2380",
                "--initial-cluster", peers, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"{CLUSTER}-{self.net.tag}",
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                # A member back from a partition asks before it calls an election, so it does
                # not depose a healthy leader.
                "--pre-vote=true",
            ]  # fmt: skip
        for node in self.bookies:
            image, data = node.dir / "disk.img", node.dir / "data"
            data.mkdir()
            run("truncate", "-s", f"{DISK_MB}M", str(image))
            run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
            run("mount", "-o", "loop", str(image), str(data))
            self.mounts.append(data)
            node.mount = data
            config = node.dir / "bookie.toml"
            config.write_text(
                f'bookie_id = "{node.name}"\n'
                f'listen = "{node.address}:3181"\n'
                f'http_listen = "{node.address}:8000"\n'
                f'advertised_address = "{node.address}"\n'
                f'metadata_service_uri = "etcd://{etcd_urls}"\n'
                f'data_dir = "{data}"\n'
                "write_cache_bytes = 4194304\n"
                "read_cache_bytes = 4194304\n"
                "entry_log_bytes = 16777216\n"
                "disk_check_interval_ms = 1000\n"
                "[journal]\n"
                "file_bytes = 8388608\n"
                "reuse_files = 0\n"
            )
            node.command = [str(self.binary), "bookie", "--config", str(config)]
        for node in self.brokers:
            config = node.dir / "broker.toml"
            config.write_text(
                f'metadata_store_url = "etcd://{etcd_urls}"\n'
                f'cluster_name = "{CLUSTER}"\n'
                f'bind_address = "{node.address}"\n'
                "broker_service_port = 6650\n"
                "web_service_port = 8080\n"
                f'advertised_address = "{node.address}"\n'
                f"metadata_store_session_timeout_millis = {BROKER_SESSION_MS}\n"
                "default_number_of_namespace_bundles = 4\n"
                "managed_ledger_default_ensemble_size = 2\n"
                "managed_ledger_default_write_quorum = 2\n"
                "managed_ledger_default_ack_quorum = 2\n"
            )
            node.command = [str(self.binary), "broker", "--config", str(config)]

    def ready(self, node: Node, offset: int) -> bool:
        if node.kind == "etcd":
            return http_status(f"http://{node.address}:2379/health") == 200
        if node.kind == "bookie":
            return "magnetar bookie listening on" in node.log_since(offset)
        return http_status(f"{self.http(node)}/admin/v2/clusters") == 200

    def start(self, node: Node, attempts: int = 5) -> list[str]:
        """Starts a node and waits until it serves; one that exits while starting (etcd
        electing a leader, say) is started again, up to `attempts` times. Returns why the
        failed attempts failed."""
        failures = []
        while True:
            offset = node.log_size()
            node.start()
            try:
                self.wait_ready(node, offset)
                return failures
            except RuntimeError as error:
                reason = next((line for line in strip_ansi(str(error)).splitlines() if line.startswith("Error:")),
                              str(error).splitlines()[0])
                failures.append(f"{node.name} start failed: {reason[:300]}")
                if len(failures) >= attempts:
                    raise
                if node.running():
                    node.kill()
                time.sleep(2.0)

    def wait_ready(self, node: Node, offset: int) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.ready(node, offset):
            if not node.running():
                raise RuntimeError(f"{node.name} exited while starting; log:\n{node.log_since(offset)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} not ready after {STARTUP_TIMEOUT:.0f}s; log:\n{node.log_since(offset)[-3000:]}")
            time.sleep(0.2)

    def start_all(self) -> None:
        offsets = {}
        for node in self.etcds:
            offsets[node.name] = node.log_size()
            node.start()
        for node in self.etcds:
            self.wait_ready(node, offsets[node.name])
        for tier in (self.bookies, self.brokers):
            for node in tier:
                offsets[node.name] = node.log_size()
                node.start()
            for node in tier:
                self.wait_ready(node, offsets[node.name])

    def stop_all(self) -> None:
        for node in reversed(list(self.nodes.values())):
            if node.running():
                node.signal(signal.SIGCONT)
                node.signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes.values():
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()

    def destroy(self) -> None:
        for node in self.nodes.values():
            if node.running():
                node.signal(signal.SIGCONT)
                node.kill()
        for mount in self.mounts:
            filler = mount / "chaos-filler"
            with contextlib.suppress(OSError):
                filler.unlink()
            if run("umount", str(mount), check=False, quiet=True).returncode != 0:
                run("umount", "-l", str(mount), check=False, quiet=True)
        self.net.destroy()


# ---------------------------------------------------------------------------------------------
# The workload


TOPICS = {
    "dedup": "persistent://public/chaos-dedup/events",
    "plain": "persistent://public/chaos-plain/events",
}


def workload_specs(service_url: str, rate: float, keys: int) -> dict[str, dict]:
    """Roles of the Rust and the Python worker: per topic a producer of each client (named,
    so deduplicating, on the dedup topic), and four subscriptions, two of them with
    consumers of both clients."""
    rust, python = [], []
    for label, topic in TOPICS.items():
        dedup = label == "dedup"
        for worker, roles in (("rust", rust), ("py", python)):
            producer = f"{worker}-{label}"
            roles.append({"kind": "produce", "topic": topic, "producer": producer,
                          "name": producer if dedup else None, "rate": rate, "keys": keys})

        def consumer(roles: list, sub: str, kind: str, name: str) -> None:
            roles.append({"kind": "consume", "topic": topic, "subscription": sub, "type": kind,
                          "consumer": f"{name}-{label}"})

        consumer(rust, "exclusive", "Exclusive", "rust-exc")
        consumer(python, "failover", "Failover", "py-fo-1")
        consumer(python, "failover", "Failover", "py-fo-2")
        consumer(rust, "shared", "Shared", "rust-sh")
        consumer(python, "shared", "Shared", "py-sh")
        consumer(rust, "key_shared", "Key_Shared", "rust-ks")
        consumer(python, "key_shared", "Key_Shared", "py-ks")
    return {"rust": {"url": service_url, "roles": rust}, "py": {"url": service_url, "roles": python}}


class Worker:
    def __init__(self, name: str, command: list[str], spec: dict, workdir: Path) -> None:
        self.name = name
        self.spec_path = workdir / f"{name}.spec.json"
        self.events_path = workdir / f"{name}.events.jsonl"
        self.log_path = workdir / f"{name}.log"
        self.spec_path.write_text(json.dumps(spec, indent=1))
        self.command = [*command, str(self.spec_path), str(self.events_path)]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log_path, "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("CHAOS_CLIENT_LOG", "warn"))
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, preexec_fn=_die_with_parent)
        out.close()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = 30) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} worker did not exit {timeout:.0f}s after SIGTERM: SIGKILL")
            self.process.kill()
            self.process.wait()


class EventTail:
    """Follows the workers' event files: the latest receipt per producer and the latest
    delivery per subscription, for the recovery waits."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.offsets = {path: 0 for path in paths}
        self.last_sent: dict[str, float] = {}
        self.last_recv: dict[str, float] = {}
        self.errors: list[dict] = []

    def poll(self) -> None:
        for path in self.paths:
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[path])
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n")
            if end < 0:
                continue
            self.offsets[path] += end + 1
            for line in data[: end + 1].splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.get("ev")
                if kind == "sent":
                    producer = event["producer"]
                    self.last_sent[producer] = max(self.last_sent.get(producer, 0), event["t"])
                elif kind == "recv":
                    sub = f"{event['topic']}/{event['subscription']}"
                    self.last_recv[sub] = max(self.last_recv.get(sub, 0), event["t"])

    def recovered_since(self, since: float, producers: list[str], subscriptions: list[str]) -> bool:
        self.poll()
        return all(self.last_sent.get(p, 0) > since for p in producers) and all(
            self.last_recv.get(s, 0) > since for s in subscriptions
        )


class AckPoller(threading.Thread):
    """Polls every subscription's persistedMarkDeletePosition once a second (internalStats
    through whichever broker answers), with the time of each answer."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.samples: dict[str, list[tuple[float, tuple[int, int]]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for topic in TOPICS.values():
                path = topic.replace("persistent://", "/admin/v2/persistent/") + "/internalStats"
                for broker in self.cluster.brokers:
                    asked = time.time()
                    status, stats = http_json("GET", self.cluster.http(broker) + path, timeout=3)
                    if status != 200 or not isinstance(stats, dict):
                        continue
                    for sub, cursor in (stats.get("cursors") or {}).items():
                        position = parse_position(cursor.get("persistedMarkDeletePosition", ""))
                        if position is not None:
                            # The answer is at least as new as the request.
                            self.samples.setdefault(f"{topic}/{sub}", []).append((asked, position))
                    break


def parse_position(text: str) -> tuple[int, int] | None:
    try:
        ledger, entry = text.split(":")[:2]
        return int(ledger), int(entry)
    except (ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# Faults


@dataclass
class Fault:
    index: int
    kind: str
    target: str
    injected: float = 0.0
    healed: float = 0.0
    hold: float = 0.0
    recovered: float | None = None
    exited: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # broker_etcd: when the cut broker gave its bundles up, and when another took one (logs).
    session_lost_at: float | None = None
    taken_over_at: float | None = None

    def record(self) -> dict:
        return {
            "index": self.index, "kind": self.kind, "target": self.target, "injected": self.injected,
            "healed": self.healed, "hold_s": round(self.hold, 2),
            "recovery_s": None if self.recovered is None else round(self.recovered - self.healed, 3),
            "exited": self.exited, "notes": self.notes,
            "session_lost_at": self.session_lost_at, "taken_over_at": self.taken_over_at,
        }  # fmt: skip


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.cluster = Cluster(workdir, args.magnetar, args.tag)
        self.workers: list[Worker] = []
        self.faults: list[Fault] = []
        self.tail: EventTail | None = None
        self.poller: AckPoller | None = None
        self.findings: list[str] = []

    # -- set-up --------------------------------------------------------------------------

    def setup(self) -> None:
        log(f"cluster in {self.workdir} (network {self.cluster.net.tag}, 10.77.{self.cluster.net.subnet}.0/24)")
        self.cluster.build()
        self.cluster.start_all()
        broker = self.cluster.http(self.cluster.brokers[0])
        for label in TOPICS:
            status, _ = http_json("PUT", f"{broker}/admin/v2/namespaces/public/chaos-{label}")
            if status not in (204, 409):
                raise RuntimeError(f"creating namespace public/chaos-{label}: HTTP {status}")
            # Keep every acknowledged ledger: the checker reads the whole topic back.
            status, _ = http_json("POST", f"{broker}/admin/v2/namespaces/public/chaos-{label}/retention",
                                  {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})
            if status != 204:
                raise RuntimeError(f"setting infinite retention on public/chaos-{label}: HTTP {status}")
        status, _ = http_json("POST", f"{broker}/admin/v2/namespaces/public/chaos-dedup/deduplication", True)
        if status != 204:
            raise RuntimeError(f"enabling deduplication on public/chaos-dedup: HTTP {status}")
        specs = workload_specs(self.cluster.service_url(), self.args.rate, self.args.keys)
        self.workers = [
            Worker("rust", [str(self.args.worker)], specs["rust"], self.workdir),
            Worker("py", [sys.executable, str(HERE / "worker.py")], specs["py"], self.workdir),
        ]
        self.producers = [r["producer"] for s in specs.values() for r in s["roles"] if r["kind"] == "produce"]
        self.subscriptions = sorted({f"{r['topic']}/{r['subscription']}" for s in specs.values()
                                     for r in s["roles"] if r["kind"] == "consume"})
        self.specs = specs
        for worker in self.workers:
            worker.start()
        self.tail = EventTail([w.events_path for w in self.workers])
        self.poller = AckPoller(self.cluster)
        self.poller.start()
        start = time.time()
        if not self.wait_recovered(start, 90):
            raise RuntimeError(f"the workload did not start within 90s: sent {self.tail.last_sent}, "
                               f"delivered {self.tail.last_recv}; worker logs in {self.workdir}")
        log(f"workload running: {len(self.producers)} producers, {len(self.subscriptions)} subscriptions")

    def wait_recovered(self, since: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.tail.recovered_since(since, self.producers, self.subscriptions):
                return time.time()
            for node in self.cluster.nodes.values():
                if not node.running() and not node.paused:
                    self.restart_exited(node, None)
            time.sleep(0.2)
        return None

    # -- faults --------------------------------------------------------------------------

    def restart_exited(self, node: Node, fault: Fault | None) -> None:
        code = node.process.poll() if node.process else None
        tail = [line for line in strip_ansi(node.log_since(max(0, node.log_size() - 4000))).splitlines()
                if "WARN" in line or "ERROR" in line or "Error" in line or "panicked" in line][-3:]
        what = f"{node.name} exited with code {code}: {' | '.join(tail)[-600:]}"
        node.exits.append({"t": time.time(), "code": code, "fault": fault.index if fault else None, "log": tail})
        if fault is not None:
            fault.exited.append(what)
        # A broker stops when it lost its metadata session (as Pulsar's do): expected after
        # a fault that kept it from etcd for longer than the session.
        since_start = strip_ansi(node.log_since(node.start_offset))
        expected = node.kind == "broker" and "shutting down after losing the metadata session" in since_start
        if not expected:
            self.findings.append(f"unexpected exit: {what}" + (f" (fault {fault.index} {fault.kind})" if fault else ""))
        log(f"restarting {what[:200]}")
        for failure in self.cluster.start(node):
            log(f"  {failure}")
            if fault is not None:
                fault.notes.append(failure)

    def choose(self) -> tuple[str, str]:
        kind = self.rng.choice(self.args.kinds)
        nodes = self.cluster.nodes
        if kind in ("kill", "pause"):
            target = self.rng.choice(sorted(nodes))
        elif kind == "broker_etcd":
            # A broker that owns a topic of the workload, so that its bundles are taken over.
            owners = sorted({self.owner_of(topic) for topic in TOPICS.values()} - {None})
            target = self.rng.choice(owners or [b.name for b in self.cluster.brokers])
        elif kind in ("bookie_broker", "disk_full"):
            target = self.rng.choice([b.name for b in self.cluster.bookies])
        else:
            target = self.rng.choice([e.name for e in self.cluster.etcds])
        return kind, target

    def owner_of(self, topic: str) -> str | None:
        path = topic.replace("persistent://", "/lookup/v2/topic/persistent/")
        for broker in self.cluster.brokers:
            status, answer = http_json("GET", self.cluster.http(broker) + path, timeout=5)
            if status == 200 and isinstance(answer, dict):
                for node in self.cluster.brokers:
                    if f"//{node.address}:" in str(answer.get("brokerUrl", "")):
                        return node.name
        return None

    def inject(self, fault: Fault) -> None:
        node = self.cluster.nodes[fault.target]
        rng = self.rng
        fault.injected = time.time()
        if fault.kind == "kill":
            node.kill()
            fault.hold = rng.uniform(0.5, 3.0)
            time.sleep(fault.hold)
            fault.healed = time.time()
            for failure in self.cluster.start(node):
                log(f"  {failure}")
                fault.notes.append(failure)
        elif fault.kind == "pause":
            session = BROKER_SESSION_MS / 1000 if node.kind == "broker" else BOOKIE_SESSION_S if node.kind == "bookie" else 5
            fault.hold = session + rng.uniform(1.0, 4.0)
            node.paused = True
            node.signal(signal.SIGSTOP)
            time.sleep(fault.hold)
            node.signal(signal.SIGCONT)
            node.paused = False
            fault.healed = time.time()
        elif fault.kind == "broker_etcd":
            offset = node.log_size()
            others = {b.name: b.log_size() for b in self.cluster.brokers if b is not node}
            for etcd in self.cluster.etcds:
                self.cluster.net.block(node.name, etcd.name)
            fault.hold = 2 * BROKER_SESSION_MS / 1000 + rng.uniform(0.0, 3.0)
            time.sleep(fault.hold)
            for etcd in self.cluster.etcds:
                self.cluster.net.unblock(node.name, etcd.name)
            fault.healed = time.time()
            self.check_stop_before_takeover(fault, node, offset, others)
        elif fault.kind == "bookie_broker":
            for broker in self.cluster.brokers:
                self.cluster.net.block(node.name, broker.name)
            fault.hold = rng.uniform(4.0, 12.0)
            time.sleep(fault.hold)
            for broker in self.cluster.brokers:
                self.cluster.net.unblock(node.name, broker.name)
            fault.healed = time.time()
        elif fault.kind == "disk_full":
            filler = node.mount / "chaos-filler"
            stat = os.statvfs(node.mount)
            free = stat.f_bavail * stat.f_frsize
            run("fallocate", "-l", str(max(free - 256 * 1024, 4096)), str(filler), check=False)
            fault.hold = rng.uniform(5.0, 12.0)
            time.sleep(fault.hold)
            with contextlib.suppress(OSError):
                filler.unlink()
            fault.healed = time.time()
        elif fault.kind == "etcd_member":
            self.cluster.net.isolate(node.name)
            fault.hold = rng.uniform(5.0, 12.0)
            time.sleep(fault.hold)
            self.cluster.net.rejoin(node.name)
            fault.healed = time.time()
        else:
            raise ValueError(fault.kind)

    def check_stop_before_takeover(self, fault: Fault, node: Node, offset: int, others: dict[str, int]) -> None:
        """A broker cut off from etcd must have stopped serving before another broker took
        one of its bundles: from the logs, the time it gave its bundles up against the first
        time another broker took one it held."""
        # Let the other broker's log catch up with the takeover, if there was one.
        time.sleep(1.0)
        own = strip_ansi(node.log_since(0))
        held = set(re.findall(r"bundle=(\S+) broker=\S+ bundle owned", own)) | set(
            re.findall(r"bundle owned.*?bundle=(\S+)", own))
        lost_at = None
        for line in strip_ansi(node.log_since(offset)).splitlines():
            if "metadata session is lost" in line:
                lost_at = log_time(line)
                break
        taken_at = None
        for other, other_offset in others.items():
            for line in strip_ansi(self.cluster.nodes[other].log_since(other_offset)).splitlines():
                if "bundle owned" in line and any(bundle in line for bundle in held):
                    at = log_time(line)
                    if at is not None and (taken_at is None or at < taken_at):
                        taken_at = at
        fault.session_lost_at, fault.taken_over_at = lost_at, taken_at
        fault.notes.append(f"session lost locally at {lost_at}, first takeover at {taken_at}")
        if taken_at is not None and (lost_at is None or lost_at > taken_at):
            self.findings.append(f"fault {fault.index}: {node.name} cut off from etcd still served after another "
                                 f"broker took its bundle (lost {lost_at}, taken {taken_at})")

    def run_faults(self) -> None:
        for index in range(self.args.faults):
            kind, target = self.choose()
            fault = Fault(index, kind, target)
            self.faults.append(fault)
            log(f"fault {index + 1}/{self.args.faults}: {kind} {target}")
            self.inject(fault)
            recovered = self.wait_recovered(fault.healed, RECOVERY_TIMEOUT)
            for node in self.cluster.nodes.values():
                if not node.running():
                    self.restart_exited(node, fault)
            fault.recovered = recovered
            if recovered is None:
                self.findings.append(f"fault {index} ({kind} {target}): no recovery within {RECOVERY_TIMEOUT:.0f}s "
                                     f"(sent {self.tail.last_sent}, delivered {self.tail.last_recv})")
                log(f"  NOT recovered within {RECOVERY_TIMEOUT:.0f}s")
            else:
                log(f"  held {fault.hold:.1f}s, recovered {recovered - fault.healed:.2f}s after the heal"
                    + (f"; restarted: {', '.join(e.split(' ')[0] for e in fault.exited)}" if fault.exited else ""))
            time.sleep(self.rng.uniform(self.args.gap / 2, self.args.gap * 1.5))

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> None:
        log("stopping the producers")
        for worker in self.workers:
            worker.signal(signal.SIGUSR1)
        quiet_since, deadline = time.monotonic(), time.monotonic() + 90
        last = dict(self.tail.last_sent)
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 5:
            time.sleep(0.5)
            self.tail.poll()
            if self.tail.last_sent != last:
                last, quiet_since = dict(self.tail.last_sent), time.monotonic()
        log("draining the subscriptions")
        acked, _ = self.read_events()
        deadline = time.monotonic() + self.args.drain
        while time.monotonic() < deadline:
            acked, events = self.read_events()
            missing = self.undelivered(acked, events)
            if not any(missing.values()):
                break
            time.sleep(2)
        time.sleep(2)
        for worker in self.workers:
            worker.stop()
        self.poller.stop.set()
        self.poller.join(timeout=10)

    def read_events(self) -> tuple[dict, list[dict]]:
        acked: dict[tuple[str, str, int], dict] = {}
        events = []
        for worker in self.workers:
            try:
                lines = worker.events_path.read_bytes().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                events.append(event)
                if event.get("ev") == "sent":
                    acked[(event["producer"], event["key"], event["seq"])] = event
        events.sort(key=lambda e: e["t"])
        return acked, events

    def topic_of_producer(self, producer: str) -> str:
        for spec in self.specs.values():
            for role in spec["roles"]:
                if role["kind"] == "produce" and role["producer"] == producer:
                    return role["topic"]
        raise KeyError(producer)

    def undelivered(self, acked: dict, events: list[dict]) -> dict[str, set]:
        delivered: dict[str, set] = {sub: set() for sub in self.subscriptions}
        for event in events:
            if event.get("ev") == "recv" and "seq" in event:
                delivered[f"{event['topic']}/{event['subscription']}"].add((event["producer"], event["key"], event["seq"]))
        missing = {}
        for sub in self.subscriptions:
            topic = sub.rsplit("/", 1)[0]
            missing[sub] = {m for m in acked if self.topic_of_producer(m[0]) == topic} - delivered[sub]
        return missing

    def read_back(self) -> dict[str, list]:
        """Every message stored in each topic, read with a reader from the earliest."""
        import pulsar  # the official client, from the venv the harness runs in

        stored: dict[str, list] = {}
        client = pulsar.Client(self.cluster.service_url(), operation_timeout_seconds=60,
                               logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        try:
            for topic in TOPICS.values():
                reader = client.create_reader(topic, pulsar.MessageId.earliest, receiver_queue_size=1000)
                messages = []
                idle_deadline = time.monotonic() + 30
                while time.monotonic() < idle_deadline:
                    if not reader.has_message_available():
                        break
                    try:
                        message = reader.read_next(timeout_millis=5000)
                    except pulsar.Timeout:
                        continue
                    idle_deadline = time.monotonic() + 30
                    try:
                        producer, key, seq, _ = message.data().decode().split("|", 3)
                        messages.append((producer, key, int(seq)))
                    except ValueError:
                        messages.append(("?", message.data().decode(errors="replace"), -1))
                reader.close()
                stored[topic] = messages
        finally:
            client.close()
        return stored

    # -- the checker ---------------------------------------------------------------------

    def check(self) -> dict:
        acked, events = self.read_events()
        stored = self.read_back()
        dedup_producers = {r["producer"] for s in self.specs.values() for r in s["roles"]
                           if r["kind"] == "produce" and r.get("name")}
        sub_types = {f"{r['topic']}/{r['subscription']}": r["type"] for s in self.specs.values()
                     for r in s["roles"] if r["kind"] == "consume"}
        report: dict = {"seed": self.args.seed, "faults_requested": self.args.faults}
        per_producer = {}
        for producer in self.producers:
            per_producer[producer] = {
                "dedup": producer in dedup_producers,
                "acked": sum(1 for m in acked if m[0] == producer),
                "send_failed": sum(1 for e in events if e.get("ev") == "send_failed" and e.get("producer") == producer),
            }
        # Duplicates in storage, and acknowledged messages that are not stored at all.
        for topic, messages in stored.items():
            counts: dict[tuple, int] = {}
            for message in messages:
                counts[message] = counts.get(message, 0) + 1
            for producer in self.producers:
                if self.topic_of_producer(producer) != topic:
                    continue
                entry = per_producer[producer]
                entry["stored"] = sum(1 for m in counts if m[0] == producer)
                entry["duplicated"] = sum(c - 1 for m, c in counts.items() if m[0] == producer and c > 1)
                entry["not_stored"] = sum(1 for m in acked if m[0] == producer and m not in counts)
        # Lost per subscription: acknowledged, never delivered.
        missing = self.undelivered(acked, events)
        subs: dict[str, dict] = {}
        for sub in self.subscriptions:
            subs[sub] = {"type": sub_types[sub], "lost": len(missing[sub]),
                         "lost_examples": [list(m) for m in sorted(missing[sub])[:5]]}
        # Order per key, where the type promises it: first deliveries of a (producer, key)
        # must come in sequence order.
        first_seen: dict[str, set] = {sub: set() for sub in self.subscriptions}
        highest: dict[tuple[str, str, str], int] = {}
        reordered: dict[str, list] = {sub: [] for sub in self.subscriptions}
        deliveries: dict[str, int] = {sub: 0 for sub in self.subscriptions}
        redelivered: dict[str, int] = {sub: 0 for sub in self.subscriptions}
        for event in events:
            if event.get("ev") != "recv" or "seq" not in event:
                continue
            sub = f"{event['topic']}/{event['subscription']}"
            message = (event["producer"], event["key"], event["seq"])
            deliveries[sub] += 1
            if message in first_seen[sub]:
                redelivered[sub] += 1
                continue
            first_seen[sub].add(message)
            slot = (sub, event["producer"], event["key"])
            if slot in highest and event["seq"] < highest[slot]:
                reordered[sub].append({"message": list(message), "after_seq": highest[slot], "t": event["t"],
                                       "consumer": event["consumer"]})
            highest[slot] = max(highest.get(slot, -1), event["seq"])
        # Deliveries after an ack the subscription had persisted.
        acked_at: dict[tuple[str, str], float] = {}
        after_ack: dict[str, list] = {sub: [] for sub in self.subscriptions}
        prefix = {}
        for sub, samples in self.poller.samples.items():
            samples.sort()
            times, best, running = [], [], (-1, -1)
            for at, position in samples:
                running = max(running, position)
                times.append(at)
                best.append(running)
            prefix[sub] = (times, best)
        for event in events:
            kind = event.get("ev")
            if kind not in ("recv", "acked") or "id" not in event:
                continue
            sub = f"{event['topic']}/{event['subscription']}"
            key = (sub, event["id"])
            if kind == "acked":
                acked_at.setdefault(key, event["t"])
                continue
            if key not in acked_at or sub not in prefix:
                continue
            times, best = prefix[sub]
            i = bisect.bisect_left(times, event["t"] - PERSISTED_ACK_MARGIN) - 1
            position = parse_position(event["id"])
            if i >= 0 and position is not None and position <= best[i] and times[i] > acked_at[key]:
                after_ack[sub].append({"id": event["id"], "t": event["t"], "consumer": event["consumer"],
                                       "persisted_seen_at": times[i]})
        for sub in self.subscriptions:
            ordered = sub_types[sub] in ORDERED_TYPES
            subs[sub].update(deliveries=deliveries[sub], redeliveries=redelivered[sub],
                             reordered=len(reordered[sub]) if ordered else None,
                             reordered_examples=reordered[sub][:5] if ordered else [],
                             redelivered_after_persisted_ack=len(after_ack[sub]),
                             redelivered_after_persisted_ack_examples=after_ack[sub][:5])
        faults = [f.record() for f in self.faults]
        by_kind: dict[str, dict] = {}
        for record in faults:
            entry = by_kind.setdefault(record["kind"], {"injected": 0, "recovery_s": [], "not_recovered": 0})
            entry["injected"] += 1
            if record["recovery_s"] is None:
                entry["not_recovered"] += 1
            else:
                entry["recovery_s"].append(record["recovery_s"])
        for entry in by_kind.values():
            values = sorted(entry.pop("recovery_s"))
            entry["recovery_p50_s"] = values[len(values) // 2] if values else None
            entry["recovery_max_s"] = values[-1] if values else None
        totals = {
            "acked": sum(p["acked"] for p in per_producer.values()),
            "lost": len(set().union(*missing.values())) if missing else 0,
            "not_stored": sum(p.get("not_stored", 0) for p in per_producer.values()),
            "duplicated_dedup": sum(p.get("duplicated", 0) for p in per_producer.values() if p["dedup"]),
            "duplicated_plain": sum(p.get("duplicated", 0) for p in per_producer.values() if not p["dedup"]),
            "reordered": sum(s["reordered"] or 0 for s in subs.values()),
            "redelivered_after_persisted_ack": sum(s["redelivered_after_persisted_ack"] for s in subs.values()),
            "faults": len(faults),
            "not_recovered": sum(1 for f in faults if f["recovery_s"] is None),
            "unexpected_exits": sum(1 for f in self.findings if f.startswith("unexpected exit")),
        }
        failures = []
        if totals["lost"]:
            failures.append(f"{totals['lost']} acknowledged messages never delivered to some subscription")
        if totals["not_stored"]:
            failures.append(f"{totals['not_stored']} acknowledged messages not stored")
        if totals["duplicated_dedup"]:
            failures.append(f"{totals['duplicated_dedup']} duplicates from deduplicating producers")
        if totals["reordered"]:
            failures.append(f"{totals['reordered']} messages out of order per key where the type promises order")
        if totals["redelivered_after_persisted_ack"]:
            failures.append(f"{totals['redelivered_after_persisted_ack']} deliveries after a persisted ack")
        failures.extend(self.findings)
        report.update(totals=totals, producers=per_producer, subscriptions=subs, faults_by_kind=by_kind,
                      faults=faults, findings=self.findings, failures=failures,
                      worker_errors=[e for e in events if e.get("ev") == "role_error"][:50])
        return report


def summary(report: dict) -> str:
    t = report["totals"]
    lines = [
        f"chaos run, seed {report['seed']}: {t['faults']} faults, {t['acked']} messages acknowledged to producers",
        f"  lost {t['lost']}   not stored {t['not_stored']}   duplicated: dedup {t['duplicated_dedup']}, "
        f"plain {t['duplicated_plain']}   reordered {t['reordered']}   "
        f"redelivered after persisted ack {t['redelivered_after_persisted_ack']}",
        "  producers:",
    ]
    for name, p in report["producers"].items():
        lines.append(f"    {name:12} {'dedup' if p['dedup'] else 'plain':5} acked {p['acked']:6}  stored {p.get('stored', 0):6}"
                     f"  duplicated {p.get('duplicated', 0):4}  send failed {p['send_failed']}")
    lines.append("  subscriptions:")
    for name, s in report["subscriptions"].items():
        lines.append(f"    {name.replace('persistent://public/', ''):38} {s['type']:10} deliveries {s['deliveries']:6}"
                     f"  redelivered {s['redeliveries']:5}  lost {s['lost']}  reordered {s['reordered']}"
                     f"  after persisted ack {s['redelivered_after_persisted_ack']}")
    lines.append("  faults (recovery: heal to a receipt on every producer and a delivery on every subscription):")
    for kind, k in sorted(report["faults_by_kind"].items()):
        p50 = "-" if k["recovery_p50_s"] is None else f"{k['recovery_p50_s']:.2f}s"
        top = "-" if k["recovery_max_s"] is None else f"{k['recovery_max_s']:.2f}s"
        lines.append(f"    {kind:14} {k['injected']:3} injected  recovery p50 {p50:>8}  max {top:>8}"
                     f"  not recovered {k['not_recovered']}")
    if report["failures"]:
        lines.append("FAILED:")
        lines.extend(f"  - {f}" for f in report["failures"])
    else:
        lines.append("OK: nothing lost, no duplicates with deduplication, order kept, no redelivery after a persisted ack")
    return "\n".join(lines)


def find_binary(explicit: str | None, relative: str) -> Path:
    if explicit:
        path = Path(explicit)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        candidates = [target / profile / relative for profile in ("release", "debug")]
        existing = [c for c in candidates if c.exists()]
        if not existing:
            raise SystemExit(f"error: no {relative} under {target}/{{release,debug}}: run cargo build --workspace --all-targets")
        # The newest build: a stale release binary must not hide a fresh debug one.
        path = max(existing, key=lambda c: c.stat().st_mtime)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"error: {path} is not an executable file")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="seed of the fault schedule (default: random, printed)")
    parser.add_argument("--faults", type=int, default=6, help="faults to inject (default 6)")
    parser.add_argument("--kinds", default=",".join(FAULT_KINDS), help=f"fault kinds to draw from (default {','.join(FAULT_KINDS)})")
    parser.add_argument("--rate", type=float, default=20.0, help="messages a second per producer (default 20)")
    parser.add_argument("--keys", type=int, default=8, help="keys per producer (default 8)")
    parser.add_argument("--gap", type=float, default=3.0, help="mean seconds between a recovery and the next fault (default 3)")
    parser.add_argument("--drain", type=float, default=120.0, help="longest wait for the subscriptions to drain (default 120 s)")
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--workdir", type=Path, help="keep the cluster's files and logs here (default: a temp dir, deleted on success)")
    parser.add_argument("--magnetar", help="the magnetar binary (default: the newest of target/{release,debug}/magnetar)")
    parser.add_argument("--worker", help="the Rust worker (default: the newest of target/{release,debug}/examples/chaos_worker)")
    args = parser.parse_args(argv)
    if args.faults < 0:
        parser.error("--faults must be at least 0")
    if args.rate <= 0 or args.keys <= 0:
        parser.error("--rate and --keys must be positive")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in FAULT_KINDS]
    if unknown or not args.kinds:
        parser.error(f"--kinds: unknown {unknown}; choose from {', '.join(FAULT_KINDS)}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"chaos seed {args.seed} (replay with --seed {args.seed} --faults {args.faults}"
          f"{'' if args.kinds == list(FAULT_KINDS) else ' --kinds ' + ','.join(args.kinds)})", flush=True)
    if os.geteuid() != 0:
        print("error: the chaos harness needs root (network namespaces, loop mounts)", file=sys.stderr)
        return 2
    for tool in ("ip", "mkfs.ext4", "mount", "fallocate", "truncate"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed", file=sys.stderr)
            return 2
    if shutil.which("etcd") is None:
        print("error: etcd is not installed (Debian: apt-get install etcd-server)", file=sys.stderr)
        return 2
    args.magnetar = find_binary(args.magnetar, "magnetar")
    args.worker = find_binary(args.worker, "examples/chaos_worker")
    args.tag = f"mc{os.getpid() % 100000:05d}"[:7]
    log(f"magnetar {args.magnetar}, worker {args.worker}")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="magnetar-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(args, workdir)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background (SIG_IGN)
    report = None
    try:
        chaos.setup()
        chaos.run_faults()
        chaos.finish()
        report = chaos.check()
    except KeyboardInterrupt as stop:
        log(f"interrupted ({stop}): cleaning up")
        return 130
    except Exception as error:  # noqa: BLE001 - reported with the work dir, then cleaned up
        log(f"error: {error}")
        keep = True
        return 2
    finally:
        for worker in chaos.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
        if chaos.poller is not None:
            chaos.poller.stop.set()
        with contextlib.suppress(Exception):
            chaos.cluster.stop_all()
        chaos.cluster.destroy()
        if report is not None:
            report["workdir"] = str(workdir)
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))
            print(summary(report), flush=True)
            if report["failures"]:
                keep = True
        if keep:
            log(f"files and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
