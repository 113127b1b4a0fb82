"""Harness of the Paho interoperability suite: release brokers on free ports, and Paho clients
that record what they get.

The broker binary is $HERMES_MQTT_BIN, or target/release/hermes-mqtt of this repository
(run.sh builds it). With HERMES_PAHO_ADDR=127.0.0.1:PORT the cases that need no broker of
their own run against the broker there instead (another broker: a check of the suite itself;
configure it as `Broker` configures hermes-mqtt); the others are skipped. Every broker runs with a temporary data directory and is stopped at the end
of its fixture; every wait has a timeout, and a test that runs over TEST_TIMEOUT seconds fails
with a traceback instead of hanging.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

REPO = pathlib.Path(__file__).resolve().parents[4]
BIN = pathlib.Path(os.environ.get("HERMES_MQTT_BIN", REPO / "target" / "release" / "hermes-mqtt"))
# Seconds any one wait may take; generous, the machine may be shared.
WAIT = 10.0
# Seconds one test may take in all.
TEST_TIMEOUT = 90
# The broker's max_packet_size in the suite (its default, written out).
MAX_PACKET_SIZE = 1_048_576
# The broker's max_inflight in the suite (its default, written out).
MAX_INFLIGHT = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A hermes-mqtt process on 127.0.0.1:port with its own data directory.

    `restart()` keeps the port, the data directory and the configuration."""

    def __init__(self, directory: pathlib.Path, extra: str = "", memory: bool = False):
        self.dir = directory
        self.port = free_port()
        self.log = directory / "broker.log"
        self.config = directory / "broker.toml"
        store = "memory = true" if memory else f'data_dir = "{directory / "data"}"'
        self.config.write_text(
            f"{store}\n"
            f'listeners = ["127.0.0.1:{self.port}"]\n'
            f"max_packet_size = {MAX_PACKET_SIZE}\n"
            f"max_inflight = {MAX_INFLIGHT}\n"
            'sys_interval = "1s"\n'
            f"{extra}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert BIN.exists(), f"{BIN} is missing: cargo build --release -p hermes-mqtt"
        before = self.log.read_text() if self.log.exists() else ""
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "--config", str(self.config), "--log-level", "info"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the broker exited: {self.log.read_text()}")
            started = self.log.read_text()[len(before):]
            if "listening on" in started:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"the broker did not start: {self.log.read_text()}")

    def stop(self) -> int | None:
        """SIGTERM (graceful: everything is stored) and wait; the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: what was not committed is lost, as in a crash."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=WAIT)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def make_broker(extra: str = "", memory: bool = False):
    directory = pathlib.Path(tempfile.mkdtemp(prefix="hermes-paho-"))
    broker = Broker(directory, extra, memory)
    broker.start()
    return broker


def finish(broker: Broker) -> None:
    broker.kill() if broker.alive() else None
    for path in sorted(broker.dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    broker.dir.rmdir()


class External:
    """A broker this suite did not start (HERMES_PAHO_ADDR)."""

    def __init__(self, port: int):
        self.port = port

    def alive(self) -> bool:
        return True


EXTERNAL = os.environ.get("HERMES_PAHO_ADDR")


def own_only():
    if EXTERNAL:
        pytest.skip("needs a broker the suite starts (HERMES_PAHO_ADDR is set)")


@pytest.fixture(scope="session")
def broker():
    """One broker for the cases that need no restart (each uses its own topics)."""
    if EXTERNAL:
        host, port = EXTERNAL.rsplit(":", 1)
        assert host == "127.0.0.1", "the clients connect to 127.0.0.1"
        yield External(int(port))
        return
    b = make_broker()
    yield b
    assert b.alive(), f"the shared broker died: {b.log.read_text()}"
    finish(b)


@pytest.fixture
def own_broker():
    """A broker of the test's own, for the cases that stop or kill it."""
    own_only()
    b = make_broker()
    yield b
    finish(b)


@pytest.fixture(scope="session")
def acl_broker():
    """A broker whose ACL lets anonymous clients read and write everything under TopicA and
    test/, but subscribe to nothing under test/nosubscribe (the Paho suite's refused filter)."""
    own_only()
    directory = pathlib.Path(tempfile.mkdtemp(prefix="hermes-paho-acl-"))
    acl = directory / "acl"
    acl.write_text("topic readwrite TopicA/#\ntopic readwrite test/#\ntopic deny test/nosubscribe\n")
    b = Broker(directory, f'acl_file = "{acl}"', memory=True)
    b.start()
    yield b
    finish(b)


@pytest.fixture(scope="session")
def tls_broker():
    """A broker with TLS, WebSocket and WebSocket-over-TLS listeners besides TCP, and the CA
    that signed its certificate (for localhost and 127.0.0.1), made with openssl."""
    own_only()
    directory = pathlib.Path(tempfile.mkdtemp(prefix="hermes-paho-tls-"))
    ca, ca_key, key, csr, cert, ext = (
        directory / n for n in ("ca.pem", "ca.key", "key.pem", "server.csr", "cert.pem", "ext")
    )
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, timeout=60)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=hermes-mqtt paho CA", "-keyout", ca_key, "-out", ca)
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", key, "-out", csr)
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-extfile", ext, "-out", cert)
    ports = {kind: free_port() for kind in ("tls", "ws", "wss")}
    listeners = "".join(
        f'[[listeners]]\naddress = "127.0.0.1:{port}"\nkind = "{kind}"\n'
        + (f'cert = "{cert}"\nkey = "{key}"\n' if kind != "ws" else "")
        for kind, port in ports.items()
    )
    b = Broker(directory, memory=True)
    # The TCP listener is given as a table too: a TOML file cannot mix the two forms.
    b.config.write_text(
        b.config.read_text().replace(
            f'listeners = ["127.0.0.1:{b.port}"]\n', ""
        )
        + f'[[listeners]]\naddress = "127.0.0.1:{b.port}"\n'
        + listeners
    )
    b.ports = ports
    b.ca = ca
    b.start()
    yield b
    finish(b)


@pytest.fixture(autouse=True)
def test_timeout():
    """Fails a test that runs over TEST_TIMEOUT seconds (SIGALRM raises in the main thread)."""

    def expired(signum, frame):
        raise TimeoutError(f"the test ran over {TEST_TIMEOUT} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def unique(prefix: str) -> str:
    """A topic prefix (or client ID part) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate, timeout: float = WAIT, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Recorder(mqtt.Client):
    """A Paho client (callback API version 2) that records what it is told.

    `connacks` holds the raw (flags, return code) bytes of every CONNACK, as the broker sent
    them (Paho turns MQTT 3 return codes into MQTT 5 reason codes in its callback);
    `messages` every message delivered to the application; `subacks` and `unsubacks` the
    acknowledgements by packet identifier; `disconnects` every lost or closed connection."""

    def __init__(self, client_id: str = "", clean_session: bool = True, protocol=mqtt.MQTTv311, **kw):
        super().__init__(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=protocol,
            reconnect_on_failure=False,
            **kw,
        )
        self.cond = threading.Condition()
        self.connacks: list[tuple[int, int]] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: set[int] = set()
        self.disconnects = 0
        self.log_lines: list[str] = []
        self.on_message = self._message
        self.on_subscribe = self._subscribed
        self.on_unsubscribe = self._unsubscribed
        self.on_disconnect = self._disconnected
        self.on_log = lambda c, u, level, line: self.log_lines.append(line)

    # Raw CONNACK: flags byte and return code, before Paho interprets them.
    def _handle_connack(self):
        packet = self._in_packet["packet"]
        with self.cond:
            self.connacks.append((packet[0], packet[1]))
            self.cond.notify_all()
        return super()._handle_connack()

    def _message(self, client, userdata, message):
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def _subscribed(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.cond.notify_all()

    def _unsubscribed(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.unsubacks.add(mid)
            self.cond.notify_all()

    def _disconnected(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = WAIT, what: str = "a condition"):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def start(self, broker: Broker, keepalive: int = 60, port: int | None = None,
              host: str = "127.0.0.1") -> tuple[int, int]:
        """Connects, starts the network thread and waits for the CONNACK: (flags, return code)."""
        count = len(self.connacks)
        self.connect(host, port or broker.port, keepalive)
        self.loop_start()
        self.wait_for(lambda c: len(c.connacks) > count, what="CONNACK")
        return self.connacks[-1]

    def open(self, broker: Broker, keepalive: int = 60, **kw) -> "Recorder":
        """`start`, asserting that the connection was accepted."""
        flags, rc = self.start(broker, keepalive, **kw)
        assert rc == 0, f"CONNACK return code {rc}"
        return self

    def sub(self, *filters: tuple[str, int]) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK: its return codes."""
        rc, mid = self.subscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self.wait_for(lambda c: mid in c.subacks, what="SUBACK")
        return self.subacks[mid]

    def unsub(self, *filters: str) -> None:
        rc, mid = self.unsubscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self.wait_for(lambda c: mid in c.unsubacks, what="UNSUBACK")

    def pub(self, topic: str, payload, qos: int = 0, retain: bool = False) -> None:
        """PUBLISH and, for QoS 1 and 2, wait for PUBACK or PUBCOMP."""
        info = self.publish(topic, payload, qos, retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"{topic} QoS {qos} not acknowledged"

    def received(self, count: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        """Waits for `count` messages in all; returns them all."""
        self.wait_for(lambda c: len(c.messages) >= count, timeout, f"{count} messages")
        with self.cond:
            return list(self.messages)

    def close(self) -> None:
        """DISCONNECT, then stop the network thread."""
        if self.is_connected():
            self.disconnect()
        self.loop_stop()

    def drop(self) -> None:
        """Ends the connection without DISCONNECT (as a crashed client does), then stops the
        network thread (which, once asked to stop, only ends when the connection has)."""
        sock = self.socket()
        if sock is not None:
            count = self.disconnects
            sock.shutdown(socket.SHUT_RDWR)
            self.wait_for(lambda c: c.disconnects > count, what="the connection to end")
        self.loop_stop()


@pytest.fixture
def clients():
    """Makes Recorders and closes every one at the end of the test."""
    made: list[Recorder] = []

    def make(*args, cls=Recorder, **kw) -> Recorder:
        c = cls(*args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass
