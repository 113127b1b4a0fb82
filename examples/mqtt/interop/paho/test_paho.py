"""hermes-mqtt against the Eclipse Paho Python client (paho-mqtt 2.x, callback API version 2).

The cases of the Paho interoperability test set for MQTT 3.1.1 (basic, retained messages,
offline message queueing, will message, overlapping subscriptions, keepalive, redelivery on
reconnect, zero-length client ID, '$' topics, unsubscribe, subscribe failure), then MQTT 3.1,
large payloads, many topics, UTF-8 topics, a broker SIGKILL mid-flow and retained messages
across a restart. Statement numbers [MQTT-x.y.z-n] are those of OASIS MQTT 3.1.1.

Each test uses topics of its own (a unique root), so they share one broker; the Paho suite's
topic names are kept under that root.
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import MAX_INFLIGHT, MAX_PACKET_SIZE, WAIT, Recorder, unique, wait_until

# The Paho suite's topics and filters.
TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
# How long to wait for a message that must not come, after a barrier message that did.
QUIET = 0.5

PROTOCOLS = [pytest.param(mqtt.MQTTv311, id="3.1.1"), pytest.param(mqtt.MQTTv31, id="3.1")]


def names(root: str):
    return [f"{root}/{t}" for t in TOPICS], [f"{root}/{w}" for w in WILDTOPICS]


def client_id(prefix: str) -> str:
    # At most 23 characters, so that MQTT 3.1 brokers take it too.
    return unique(prefix)[:23]


def barrier(sub: Recorder, pub: Recorder, topic: str) -> None:
    """Publishes a marker on `topic` (which `sub` is subscribed to) and waits until `sub` has
    it: what was published before on the same path has arrived. Then waits QUIET seconds
    for anything that should not come."""
    marker = f"barrier-{time.monotonic_ns()}".encode()
    pub.pub(topic, marker, qos=1)
    sub.wait_for(lambda c: any(m.payload == marker for m in c.messages), what="the barrier")
    time.sleep(QUIET)


def payloads(messages) -> list[bytes]:
    return [m.payload for m in messages if not m.payload.startswith(b"barrier-")]


# ---- The Paho interoperability cases ----


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_basic(broker, clients, protocol):
    """Connect, subscribe at QoS 2, publish at QoS 0, 1 and 2 and receive all three, each at
    the QoS it was published with (the lower of it and the granted QoS [MQTT-3.8.4-6])."""
    topics, _ = names(unique("basic"))
    c = clients(client_id("basic"), protocol=protocol)
    flags, rc = c.start(broker)
    assert (flags, rc) == (0, 0)  # [MQTT-3.2.2-1] clean session: no session present
    assert c.sub((topics[0], 2)) == [2]  # [MQTT-3.9.3-1] granted QoS 2
    for qos in (0, 1, 2):
        c.pub(topics[0], f"qos {qos}".encode(), qos)
    got = c.received(3)
    assert sorted((m.payload, m.qos) for m in got) == [(b"qos 0", 0), (b"qos 1", 1), (b"qos 2", 2)]
    assert all(m.topic == topics[0] and not m.retain and not m.dup for m in got)
    c.disconnect()
    c.wait_for(lambda c: c.disconnects == 1, what="the disconnection")


def test_retained_messages(broker, clients):
    """Retained messages at QoS 0, 1 and 2 on three topics: a wildcard subscription gets all
    three with RETAIN 1 [MQTT-3.3.1-6], [MQTT-3.3.1-8]; empty retained payloads clear them
    [MQTT-3.3.1-10], [MQTT-3.3.1-11], and a new subscription then gets none."""
    topics, wild = names(unique("retained"))
    c = clients(client_id("retained")).open(broker)
    for qos, topic in zip((0, 1, 2), topics[1:4]):
        c.pub(topic, f"qos {qos}".encode(), qos, retain=True)
    assert c.sub((wild[5], 2)) == [2]  # root/+/+ matches TopicA/B, Topic/C, TopicA/C
    got = c.received(3)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == sorted(
        [(topics[1], b"qos 0", 0), (topics[2], b"qos 1", 1), (topics[3], b"qos 2", 2)]
    )
    assert all(m.retain for m in got)

    # Clear them: the empty messages reach the subscriber as normal messages, RETAIN 0
    # (it is a live subscription [MQTT-3.3.1-9]), and are not stored [MQTT-3.3.1-11].
    for qos, topic in zip((0, 1, 2), topics[1:4]):
        c.pub(topic, b"", qos, retain=True)
    cleared = c.received(6)[3:]
    assert sorted(m.topic for m in cleared) == sorted(topics[1:4])
    assert all(m.payload == b"" and not m.retain for m in cleared)
    c.close()

    fresh = clients(client_id("retained2")).open(broker)
    assert fresh.sub((wild[5], 2)) == [2]
    barrier(fresh, fresh, topics[1])
    assert payloads(fresh.messages) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_offline_message_queueing(broker, clients, protocol):
    """A persistent session subscribed at QoS 2 gets the QoS 1 and 2 messages published while
    its client was away [MQTT-3.1.2-5]; QoS 0 ones may or may not be kept (the standard
    lets the server choose)."""
    topics, wild = names(unique("offline"))
    cid = client_id("offline")
    c = clients(cid, clean_session=False, protocol=protocol)
    flags, rc = c.start(broker)
    assert rc == 0
    assert c.sub((wild[5], 2)) == [2]
    c.close()

    p = clients(client_id("offpub")).open(broker)
    for qos, topic in zip((0, 1, 2), topics[1:4]):
        p.pub(topic, f"qos {qos}".encode(), qos)

    back = clients(cid, clean_session=False, protocol=protocol)
    flags, rc = back.start(broker)
    assert rc == 0
    # [MQTT-3.2.2-2] Session Present 1 for a resumed session; MQTT 3.1 reserves the byte (0).
    assert flags == (1 if protocol == mqtt.MQTTv311 else 0)
    back.received(2)
    barrier(back, p, topics[1])
    got = [m for m in back.messages if not m.payload.startswith(b"barrier-")]
    assert {(m.payload, m.qos) for m in got} >= {(b"qos 1", 1), (b"qos 2", 2)}
    assert len(got) in (2, 3), [m.payload for m in got]
    if len(got) == 3:
        assert (b"qos 0", 0) in {(m.payload, m.qos) for m in got}


def test_will_message(broker, clients):
    """A client whose connection ends without DISCONNECT: its will is published
    [MQTT-3.1.2-8], at its QoS, not retained [MQTT-3.1.2-15]."""
    topics, _ = names(unique("will"))
    watcher = clients(client_id("watcher")).open(broker)
    assert watcher.sub((topics[2], 2)) == [2]
    dying = clients(client_id("dying"))
    dying.will_set(topics[2], b"client not disconnected", qos=1, retain=False)
    dying.open(broker, keepalive=2)
    dying.drop()
    (m,) = watcher.received(1)
    assert (m.topic, m.payload, m.qos, m.retain) == (topics[2], b"client not disconnected", 1, False)


def test_will_not_published_after_disconnect(broker, clients):
    """A client that sends DISCONNECT: its will is discarded [MQTT-3.1.2-10], [MQTT-3.14.4-3]."""
    topics, _ = names(unique("nowill"))
    watcher = clients(client_id("watcher")).open(broker)
    assert watcher.sub((topics[2], 2)) == [2]
    polite = clients(client_id("polite"))
    polite.will_set(topics[2], b"should not be sent", qos=1)
    polite.open(broker)
    polite.close()
    barrier(watcher, watcher, topics[2])
    assert payloads(watcher.messages) == []


def test_overlapping_subscriptions(broker, clients):
    """'TopicA/#' at QoS 2 and 'TopicA/+' at QoS 1 both match TopicA/C: the message comes at
    the maximum QoS of the matching subscriptions [MQTT-3.3.5-1]: one copy at QoS 2, or one
    per subscription at its QoS."""
    topics, wild = names(unique("overlap"))
    c = clients(client_id("overlap")).open(broker)
    assert c.sub((wild[6], 2), (wild[0], 1)) == [2, 1]
    c.pub(topics[3], b"overlapping topic filters", 2)
    c.received(1)
    time.sleep(QUIET)
    got = list(c.messages)
    assert all(m.payload == b"overlapping topic filters" for m in got)
    qos = sorted(m.qos for m in got)
    assert qos in ([2], [1, 2]), qos


def test_keepalive(broker, clients):
    """A client that stops sending is disconnected after 1.5 times its keep alive
    [MQTT-3.1.2-24], and its will is published [MQTT-3.1.2-8]."""
    topics, _ = names(unique("keepalive"))
    watcher = clients(client_id("watcher")).open(broker)
    assert watcher.sub((topics[4], 2)) == [2]
    silent = clients(client_id("silent"))
    silent.will_set(topics[4], b"keepalive expiry", qos=1)
    silent.open(broker, keepalive=2)
    silent.loop_stop()  # no more PINGREQ: the client goes silent with its socket open
    (m,) = watcher.received(1, timeout=3 * WAIT)
    assert (m.topic, m.payload) == (topics[4], b"keepalive expiry")
    sock = silent.socket()
    sock.setblocking(True)
    sock.settimeout(WAIT)
    try:
        assert sock.recv(1) == b"", "the broker closes the silent client's connection"
    except ConnectionResetError:
        pass


class Mute(Recorder):
    """A Paho client that takes PUBLISH packets in and never acknowledges them (it records
    (DUP, QoS) of each): a client that crashed before handling them."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.unacked: list[tuple[bool, int]] = []

    def _handle_publish(self):
        command = self._in_packet["command"]
        with self.cond:
            self.unacked.append((bool(command & 0x08), (command & 0x06) >> 1))
            self.cond.notify_all()
        return mqtt.MQTT_ERR_SUCCESS


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_redelivery_on_reconnect(broker, clients, protocol):
    """A persistent session whose client did not acknowledge a QoS 1 and a QoS 2 message gets
    both again after reconnecting, DUP 1 [MQTT-4.4.0-1], [MQTT-3.3.1-1], with their QoS."""
    topics, wild = names(unique("redeliver"))
    cid = client_id("redeliver")
    mute = clients(cid, clean_session=False, protocol=protocol, cls=Mute).open(broker)
    assert mute.sub((wild[6], 2)) == [2]
    p = clients(client_id("redelpub")).open(broker)
    p.pub(topics[1], b"qos 1", 1)
    p.pub(topics[3], b"qos 2", 2)
    mute.wait_for(lambda c: len(c.unacked) == 2, what="both PUBLISH packets")
    assert sorted(mute.unacked) == [(False, 1), (False, 2)]
    mute.close()

    back = clients(cid, clean_session=False, protocol=protocol)
    flags, rc = back.start(broker)
    assert rc == 0
    got = back.received(2)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        (topics[1], b"qos 1", 1),
        (topics[3], b"qos 2", 2),
    ]
    assert all(m.dup for m in got)


def test_qos2_pubrel_resent_on_reconnect(broker, clients):
    """A QoS 2 message the client has PUBRECed but not PUBCOMPed: after reconnecting, the
    broker resends PUBREL, not the PUBLISH [MQTT-4.4.0-1], [MQTT-4.3.3-1]: the application
    does not get it twice."""
    topics, wild = names(unique("pubrel"))
    cid = client_id("pubrel")
    first = clients(cid, clean_session=False, manual_ack=True).open(broker)
    assert first.sub((topics[0], 2)) == [2]
    p = clients(client_id("pubrelpub")).open(broker)
    p.pub(topics[0], b"exactly once", 2)
    first.received(1)  # Paho delivers QoS 2 at PUBREL; with manual_ack it sends no PUBCOMP
    first.close()

    back = clients(cid, clean_session=False).open(broker)
    back.wait_for(lambda c: any("Received PUBREL" in line for line in c.log_lines), what="PUBREL")
    barrier(back, p, topics[0])
    assert payloads(back.messages) == []
    assert not any("Received PUBLISH" in line and "exactly once" in line for line in back.log_lines)


def test_zero_length_client_id(broker, clients):
    """An empty client ID with clean session is accepted and given one [MQTT-3.1.3-6]; without
    clean session it is refused with return code 2 [MQTT-3.1.3-8], Session Present 0
    [MQTT-3.2.2-4], and the connection closed [MQTT-3.2.2-5]."""
    topics, _ = names(unique("zero"))
    ok = clients("", clean_session=True)
    assert ok.start(broker) == (0, 0)
    assert ok.sub((topics[0], 1)) == [1]
    ok.pub(topics[0], b"anonymous session works", 1)
    assert [m.payload for m in ok.received(1)] == [b"anonymous session works"]

    refused = clients("placeholder", clean_session=False)
    refused._client_id = b""  # Paho refuses to build this client; the wire allows it
    assert refused.start(broker) == (0, 2)
    refused.wait_for(lambda c: c.disconnects == 1, what="the broker to close the connection")


def test_dollar_topics(broker, clients):
    """A '#' subscription gets neither $SYS topics (published every second on this broker) nor
    other '$' topics [MQTT-4.7.2-1]; a filter starting with '$' gets them."""
    root = unique("dollar")
    everything = clients(client_id("everything")).open(broker)
    assert everything.sub(("#", 2)) == [2]
    also = clients(client_id("plusplus")).open(broker)
    assert also.sub(("+/+", 2), ("+/#", 2)) == [2, 2]
    dollar = clients(client_id("dollar")).open(broker)
    assert dollar.sub((f"${root}/#", 1)) == [1]
    sys = clients(client_id("sys")).open(broker)
    assert sys.sub(("$SYS/#", 0)) == [0]

    p = clients(client_id("dollarpub")).open(broker)
    p.pub(f"${root}/TopicA/B", b"dollar", 1)
    assert [m.payload for m in dollar.received(1)] == [b"dollar"]
    sys.received(1, timeout=3 * WAIT)  # $SYS traffic flowed meanwhile
    barrier(everything, p, f"{root}/TopicA")
    barrier(also, p, f"{root}/x")
    for c in (everything, also):
        leaked = [m.topic for m in c.messages if m.topic.startswith("$")]
        assert leaked == []


def test_unsubscribe(broker, clients):
    """After UNSUBACK, no more messages for the filters removed [MQTT-3.10.4-1],
    [MQTT-3.10.4-4]; the one kept still delivers."""
    topics, _ = names(unique("unsub"))
    c = clients(client_id("unsub")).open(broker)
    assert c.sub((topics[1], 2), (topics[2], 2), (topics[3], 2)) == [2, 2, 2]
    c.unsub(topics[1], topics[2])
    for topic in topics[1:4]:
        c.pub(topic, topic.encode(), 1)
    c.received(1)
    barrier(c, c, topics[3])
    assert payloads(c.messages) == [topics[3].encode()]


def test_subscribe_failure(acl_broker, clients):
    """A filter the broker refuses (its ACL denies test/nosubscribe) is answered 0x80, the
    others in the same SUBSCRIBE are granted [MQTT-3.9.3-1], [MQTT-3.9.3-2]; the connection
    stays usable."""
    c = clients(client_id("subfail")).open(acl_broker)
    assert c.sub(("test/nosubscribe", 2)) == [0x80]
    assert c.sub(("TopicA/B", 1), ("test/nosubscribe", 0), ("test/ok", 2)) == [1, 0x80, 2]
    c.pub("TopicA/B", b"still connected", 1)
    assert [m.payload for m in c.received(1)] == [b"still connected"]


def test_acl_denied_publish_and_will(acl_broker, clients):
    """With the same ACL: a QoS 2 PUBLISH to a topic the client may not write completes its
    flow (PUBREC, PUBCOMP: the README's choice) and reaches nobody; a will on such a topic
    refuses the CONNECT with return code 5 (not authorized) [MQTT-3.2.2-5]."""
    sub = clients(client_id("aclsub")).open(acl_broker)
    assert sub.sub(("TopicA/#", 2)) == [2]
    c = clients(client_id("aclpub")).open(acl_broker)
    c.pub("elsewhere/x", b"denied", 2)
    c.pub("TopicA/acl", b"allowed", 2)
    sub.received(1)
    time.sleep(QUIET)
    assert [m.payload for m in sub.messages] == [b"allowed"]
    w = clients(client_id("aclwill"))
    w.will_set("elsewhere/will", b"x", 1)
    assert w.start(acl_broker) == (0, 5)
    w.wait_for(lambda c: c.disconnects == 1, what="the broker to close the connection")


# ---- Beyond the Paho set ----


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_persistent_session_subscriptions_kept(broker, clients, protocol):
    """A persistent session keeps its subscription across a clean reconnect without
    resubscribing [MQTT-3.1.2-4], and a clean session then discards it [MQTT-3.1.2-6]."""
    topics, _ = names(unique("persist"))
    cid = client_id("persist")
    c = clients(cid, clean_session=False, protocol=protocol).open(broker)
    assert c.sub((topics[0], 1)) == [1]
    c.close()
    again = clients(cid, clean_session=False, protocol=protocol).open(broker)
    again.pub(topics[0], b"no resubscribe needed", 1)
    assert [m.payload for m in again.received(1)] == [b"no resubscribe needed"]
    again.close()

    clean = clients(cid, clean_session=True, protocol=protocol)
    assert clean.start(broker) == (0, 0)
    clean.close()
    p = clients(client_id("persistpub")).open(broker)
    p.pub(topics[0], b"for nobody", 1)
    resumed = clients(cid, clean_session=False, protocol=protocol)
    assert resumed.start(broker) == (0, 0)  # a new session: nothing was kept
    time.sleep(QUIET)
    assert payloads(resumed.messages) == []


@pytest.mark.parametrize("size", [256 * 1024, "max"], ids=["256KiB", "max_packet_size"])
def test_large_payload(broker, clients, size):
    """A 256 KiB payload, and one whose PUBLISH is exactly max_packet_size long, are delivered
    intact at QoS 1 (the same size reaches the subscriber, who subscribed at QoS 1)."""
    root = unique("large")
    topic = f"{root}/big"
    if size == "max":
        # Fixed header: 1 byte and a 3-byte remaining length; topic length, topic, packet ID.
        size = MAX_PACKET_SIZE - 1 - 3 - 2 - len(topic.encode()) - 2
    payload = bytes(i % 251 for i in range(size))
    sub = clients(client_id("largesub")).open(broker)
    assert sub.sub((topic, 1)) == [1]
    pub = clients(client_id("largepub")).open(broker)
    pub.pub(topic, payload, 1)
    (m,) = sub.received(1)
    assert m.qos == 1 and len(m.payload) == size and m.payload == payload


def test_payload_over_max_closes_only_that_connection(broker, clients):
    """A PUBLISH one byte over max_packet_size: the broker closes that connection (it may
    close on a protocol error [MQTT-4.8.0-1]), delivers nothing of it and publishes its
    will; its other clients are unaffected."""
    root = unique("toolarge")
    topic = f"{root}/big"
    sub = clients(client_id("toolargesub")).open(broker)
    assert sub.sub((f"{root}/#", 1)) == [1]
    bystander = clients(client_id("bystander")).open(broker)
    size = MAX_PACKET_SIZE - 1 - 3 - 2 - len(topic.encode()) - 2 + 1
    big = clients(client_id("toolargepub"))
    big.will_set(f"{root}/will", b"closed by the broker", 1)
    big.open(broker)
    big.publish(topic, bytes(size), 1)
    big.wait_for(lambda c: c.disconnects >= 1, what="the broker to close the connection")
    # The server closed the connection: not a DISCONNECT, so the will is published
    # [MQTT-3.1.2-8].
    sub.wait_for(lambda c: any(m.payload == b"closed by the broker" for m in c.messages), what="the will")
    bystander.pub(f"{root}/small", b"still here", 1)
    barrier(sub, bystander, f"{root}/small")
    assert payloads(sub.messages) == [b"closed by the broker", b"still here"]
    assert sub.is_connected() and bystander.is_connected()
    assert sub.disconnects == 0 and bystander.disconnects == 0


def test_many_topics(broker, clients):
    """500 filters in one SUBSCRIBE: one return code each, in order [MQTT-3.9.3-1]; one QoS 1
    message on each topic reaches the exact subscriber and a '#' subscriber, each once."""
    root = unique("many")
    topics = [f"{root}/t{i}/leaf" for i in range(500)]
    exact = clients(client_id("manyexact")).open(broker)
    codes = exact.sub(*[(t, 1 if i % 2 else 2) for i, t in enumerate(topics)])
    assert codes == [1 if i % 2 else 2 for i in range(500)]
    wild = clients(client_id("manywild")).open(broker)
    assert wild.sub((f"{root}/#", 1)) == [1]
    pub = clients(client_id("manypub")).open(broker)
    infos = [pub.publish(t, t.encode(), 1) for t in topics]
    for info in infos:
        info.wait_for_publish(WAIT)
        assert info.is_published()
    for c in (exact, wild):
        got = c.received(500)
        time.sleep(QUIET)
        assert sorted(m.payload for m in c.messages) == sorted(t.encode() for t in topics)
        assert all(m.topic.encode() == m.payload for m in got)


def test_utf8_topics(broker, clients):
    """Topics in several scripts (and a 4-byte character) match exactly and wildcards work
    level by level [MQTT-4.7.3-3]; no normalization: a decomposed 'é' is another topic
    [MQTT-4.7.3-4]."""
    root = unique("utf8")
    c = clients(client_id("utf8")).open(broker)
    assert c.sub(
        (f"{root}/héllo/wörld", 1),
        (f"{root}/日本語/#", 1),
        (f"{root}/+/🙂", 1),
        (f"{root}/caf\u00e9", 1),
    ) == [1, 1, 1, 1]
    sent = [
        f"{root}/héllo/wörld",
        f"{root}/日本語/トピック/深い",
        f"{root}/ελληνικά/🙂",
        f"{root}/caf\u00e9",
    ]
    for topic in sent:
        c.pub(topic, topic.encode(), 1)
    c.pub(f"{root}/cafe\u0301", b"decomposed", 1)  # matches no filter
    c.received(4)
    barrier(c, c, f"{root}/caf\u00e9")
    got = [m for m in c.messages if not m.payload.startswith(b"barrier-")]
    assert sorted(m.topic for m in got) == sorted(sent)
    assert all(m.payload == m.topic.encode() for m in got)


def test_sigkill_mid_flow(own_broker, clients):
    """The broker is SIGKILLed while QoS 1 and 2 messages flow to a persistent subscriber.
    After a restart the subscriber's session is there [MQTT-3.2.2-2], a retained message set
    before the flow is there, and every message the publisher had its PUBACK or PUBCOMP for
    before the last pause in the flow reaches the subscriber (before the crash or after), and
    so does every message acknowledged after it, up to the crash: the broker acknowledges
    once its group commit has stored the message (README, "Persistence"), more than the
    standard asks [MQTT-4.1.0-1]."""
    b = own_broker
    root = unique("crash")
    cid = client_id("crashsub")
    sub = clients(cid, clean_session=False).open(b)
    assert sub.sub((f"{root}/#", 2)) == [2]
    pub = clients(client_id("crashpub"))
    pub.max_inflight_messages_set(50)
    pub.open(b)
    pub.pub(f"{root}/retained", b"kept", 1, retain=True)

    sent: list[tuple[bytes, mqtt.MQTTMessageInfo]] = []
    paused = threading.Event()
    resume = threading.Event()
    stop = threading.Event()

    def flow():
        for n in range(20_000):
            if stop.is_set():
                return
            if n == 300:
                paused.set()
                resume.wait(3 * WAIT)
            payload = f"m{n}".encode()
            sent.append((payload, pub.publish(f"{root}/q{1 + n % 2}", payload, 1 + n % 2)))
            if n % 50 == 49:
                time.sleep(0.01)

    def acked():
        return [p for p, i in list(sent) if i.rc == mqtt.MQTT_ERR_SUCCESS and i.is_published()]

    t = threading.Thread(target=flow, daemon=True)
    t.start()
    paused.wait(WAIT)
    wait_until(lambda: len(acked()) == 300, what="the first 300 messages acknowledged")
    committed = set(acked())
    time.sleep(1.0)  # many commit intervals: all of those are stored now
    resume.set()
    wait_until(lambda: len(acked()) >= 450, what="150 more messages acknowledged")
    b.kill()
    stop.set()
    t.join(WAIT)
    time.sleep(QUIET)  # acknowledgements already on their way are read
    pub.loop_stop()
    acknowledged = set(acked())
    # The subscriber reconnects as the same Paho client, as a persistent client does: a QoS 2
    # message it has PUBRECed is its own, delivered when the PUBREL comes (the broker resends
    # PUBREL, not the message [MQTT-4.4.0-1]), so it must remember it across the crash.
    sub.wait_for(lambda c: c.disconnects == 1, what="the subscriber to see the crash")
    sub.loop_stop()

    b.start()
    flags, rc = sub.start(b)
    assert (flags, rc) == (1, 0), "the persistent session survived the crash"
    got = lambda: {m.payload for m in sub.messages}  # noqa: E731
    try:
        wait_until(lambda: committed <= got(), timeout=3 * WAIT, what="every committed message")
    except AssertionError:
        lost = sorted(committed - got(), key=lambda p: int(p[1:]))
        raise AssertionError(f"{len(lost)} of {len(committed)} committed messages lost: {lost[:20]}")
    try:
        wait_until(lambda: acknowledged <= got(), timeout=WAIT, what="the rest")
    except AssertionError:
        lost = acknowledged - got()
        raise AssertionError(f"{len(lost)} acknowledged messages lost: {sorted(lost)[:20]}")
    assert got() <= {p for p, _ in sent} | {b"kept"}, "nothing but what was published"

    fresh = clients(client_id("crashret")).open(b)
    assert fresh.sub((f"{root}/retained", 1)) == [1]
    (m,) = fresh.received(1)
    assert (m.payload, m.retain) == (b"kept", True)


def test_retained_survive_restart(own_broker, clients):
    """Retained messages at QoS 0, 1 and 2 survive a restart (SIGTERM, then start); one
    cleared before the restart stays cleared [MQTT-3.3.1-10]."""
    b = own_broker
    topics, wild = names(unique("restart"))
    c = clients(client_id("restart")).open(b)
    for qos, topic in zip((0, 1, 2), topics[1:4]):
        c.pub(topic, f"qos {qos}".encode(), qos, retain=True)
    c.pub(topics[0], b"to clear", 1, retain=True)
    c.pub(topics[0], b"", 1, retain=True)
    c.close()
    assert b.stop() == 0
    b.start()
    fresh = clients(client_id("restart2")).open(b)
    assert fresh.sub((wild[5], 2), (topics[0], 2)) == [2, 2]
    got = fresh.received(3)
    time.sleep(QUIET)
    assert sorted((m.topic, m.payload, m.qos, m.retain) for m in fresh.messages) == sorted(
        [
            (topics[1], b"qos 0", 0, True),
            (topics[2], b"qos 1", 1, True),
            (topics[3], b"qos 2", 2, True),
        ]
    )
    assert len(got) == 3


class Forgetful(Recorder):
    """A Paho client that ignores the acknowledgements named in `ignore` ("PUBREC",
    "PUBCOMP", "PUBACK"), as if they were lost with the connection: after a reconnect Paho
    resends what they would have completed (a PUBLISH with DUP 1, or the PUBREL)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ignore: set[str] = set()
        self.ignored = 0

    def _skip(self, packet: str) -> bool:
        if packet not in self.ignore:
            return False
        with self.cond:
            self.ignored += 1
            self.cond.notify_all()
        return True

    def _handle_pubrec(self):
        return mqtt.MQTT_ERR_SUCCESS if self._skip("PUBREC") else super()._handle_pubrec()

    def _handle_pubackcomp(self, cmd):
        return mqtt.MQTT_ERR_SUCCESS if self._skip(cmd) else super()._handle_pubackcomp(cmd)


@pytest.mark.parametrize("lost", ["PUBREC", "PUBCOMP"])
def test_qos2_publisher_retry_delivers_once(broker, clients, lost):
    """A QoS 2 publisher whose PUBREC (or PUBCOMP) was lost with its connection resends the
    PUBLISH with DUP 1 (or the PUBREL) on its persistent session: the broker completes the
    flow and the subscriber gets the message exactly once [MQTT-4.3.3-2], [MQTT-4.4.0-1]."""
    topics, _ = names(unique("retry2"))
    sub = clients(client_id("retry2sub")).open(broker)
    assert sub.sub((topics[0], 2)) == [2]
    pub = clients(client_id("retry2pub"), clean_session=False, cls=Forgetful)
    pub.ignore = {lost}
    pub.open(broker)
    info = pub.publish(topics[0], b"exactly once", 2)
    pub.wait_for(lambda c: c.ignored == 1, what=f"the {lost}")
    pub.drop()
    pub.ignore = set()
    flags, rc = pub.start(broker)
    assert (flags, rc) == (1, 0)
    info.wait_for_publish(WAIT)
    assert info.is_published(), "the flow completes after the reconnect"
    sub.received(1)
    barrier(sub, pub, topics[0])
    assert payloads(sub.messages) == [b"exactly once"]


def test_qos1_publisher_retry_delivers(broker, clients):
    """A QoS 1 publisher whose PUBACK was lost resends with DUP 1 after reconnecting; the
    broker acknowledges it again. At least once: one or two copies [MQTT-4.3.2-2]."""
    topics, _ = names(unique("retry1"))
    sub = clients(client_id("retry1sub")).open(broker)
    assert sub.sub((topics[0], 1)) == [1]
    pub = clients(client_id("retry1pub"), clean_session=False, cls=Forgetful)
    pub.ignore = {"PUBACK"}
    pub.open(broker)
    info = pub.publish(topics[0], b"at least once", 1)
    pub.wait_for(lambda c: c.ignored == 1, what="the PUBACK")
    pub.drop()
    pub.ignore = set()
    assert pub.start(broker) == (1, 0)
    info.wait_for_publish(WAIT)
    assert info.is_published()
    sub.received(1)
    barrier(sub, pub, topics[0])
    assert payloads(sub.messages) in ([b"at least once"], [b"at least once"] * 2)


def test_session_takeover(broker, clients):
    """A second connection with the same client ID takes the session over: the first is
    closed [MQTT-3.1.4-2] (its will published: it did not DISCONNECT), the second has the
    session's subscription (Session Present 1) and gets the messages."""
    topics, _ = names(unique("takeover"))
    cid = client_id("takeover")
    watcher = clients(client_id("towatch")).open(broker)
    assert watcher.sub((topics[1], 1)) == [1]
    first = clients(cid, clean_session=False)
    first.will_set(topics[1], b"taken over", qos=1)
    first.open(broker)
    assert first.sub((topics[0], 1)) == [1]
    second = clients(cid, clean_session=False)
    assert second.start(broker) == (1, 0)
    first.wait_for(lambda c: c.disconnects >= 1, what="the first connection to be closed")
    assert [m.payload for m in watcher.received(1)] == [b"taken over"]
    p = clients(client_id("takepub")).open(broker)
    p.pub(topics[0], b"to the second", 1)
    assert [m.payload for m in second.received(1)] == [b"to the second"]
    time.sleep(QUIET)
    assert first.messages == []


def test_resubscribe_replaces_and_retained_downgraded(broker, clients):
    """Subscribing again to the same filter replaces the subscription's QoS [MQTT-3.8.4-3] and
    resends the retained message [MQTT-3.3.1-6], which comes at the lower of its QoS and the
    granted one [MQTT-3.8.4-6]; an UNSUBSCRIBE of a filter never subscribed still gets its
    UNSUBACK [MQTT-3.10.4-5]."""
    topics, _ = names(unique("resub"))
    c = clients(client_id("resub")).open(broker)
    c.pub(topics[0], b"retained at 2", 2, retain=True)
    assert c.sub((topics[0], 1)) == [1]
    (m,) = c.received(1)
    assert (m.qos, m.retain) == (1, True)
    assert c.sub((topics[0], 0)) == [0]
    m = c.received(2)[1]
    assert (m.payload, m.qos, m.retain) == (b"retained at 2", 0, True)
    c.pub(topics[0], b"live", 2)
    m = c.received(3)[2]
    assert (m.payload, m.qos, m.retain) == (b"live", 0, False)  # one subscription, at QoS 0
    c.unsub(f"{topics[0]}/never/subscribed")
    c.pub(topics[0], b"", 0, retain=True)


def test_mqtt31_client_id_over_23_refused(broker, clients):
    """MQTT 3.1 limits client IDs to 1..23 characters: a longer one is refused with return
    code 2 (identifier rejected), and the connection closed."""
    c = clients("x" * 24, protocol=mqtt.MQTTv31)
    assert c.start(broker) == (0, 2)
    c.wait_for(lambda c: c.disconnects == 1, what="the broker to close the connection")


def test_retained_will(broker, clients):
    """A retained will at QoS 2 is published with RETAIN to current subscribers... as a live
    message (RETAIN 0 [MQTT-3.3.1-9]), and kept for later ones (RETAIN 1) [MQTT-3.1.2-17]."""
    topics, _ = names(unique("rwill"))
    watcher = clients(client_id("rwwatch")).open(broker)
    assert watcher.sub((topics[0], 2)) == [2]
    dying = clients(client_id("rwdying"))
    dying.will_set(topics[0], b"gone", qos=2, retain=True)
    dying.open(broker)
    dying.drop()
    (m,) = watcher.received(1)
    assert (m.payload, m.qos, m.retain) == (b"gone", 2, False)
    later = clients(client_id("rwlater")).open(broker)
    assert later.sub((topics[0], 2)) == [2]
    (m,) = later.received(1)
    assert (m.payload, m.qos, m.retain) == (b"gone", 2, True)
    later.pub(topics[0], b"", 0, retain=True)


@pytest.mark.parametrize("transport", ["tls", "ws", "wss"])
def test_transports(tls_broker, clients, transport):
    """Paho over TLS (checking the broker's certificate against the CA), WebSocket (subprotocol
    "mqtt", path /mqtt) and WebSocket over TLS, to and from a plain TCP client; a QoS 2 round
    trip and a 256 KiB payload each way."""
    b = tls_broker
    topics, _ = names(unique(f"transport-{transport}"))
    c = clients(client_id(transport), transport="websockets" if "ws" in transport else "tcp")
    if transport in ("tls", "wss"):
        c.tls_set(ca_certs=str(b.ca))
    if "ws" in transport:
        c.ws_set_options(path="/mqtt")
    c.open(b, port=b.ports[transport], host="localhost")
    tcp = clients(client_id(f"{transport}tcp")).open(b)
    assert c.sub((topics[0], 2)) == [2]
    assert tcp.sub((topics[1], 2)) == [2]
    big = bytes(i % 253 for i in range(256 * 1024))
    tcp.pub(topics[0], b"to " + transport.encode(), 2)
    tcp.pub(topics[0], big, 1)
    c.pub(topics[1], b"from " + transport.encode(), 2)
    c.pub(topics[1], big, 1)
    # Sorted: order holds per topic and QoS only [MQTT-4.6.0-6], and Paho hands a QoS 2
    # message over at PUBREL, a QoS 1 one at once.
    got = c.received(2)
    assert sorted((len(m.payload), m.payload, m.qos) for m in got) == sorted(
        [(len(b"to ") + len(transport), b"to " + transport.encode(), 2), (len(big), big, 1)]
    )
    got = tcp.received(2)
    assert sorted((len(m.payload), m.payload, m.qos) for m in got) == sorted(
        [(len(b"from ") + len(transport), b"from " + transport.encode(), 2), (len(big), big, 1)]
    )


def test_redelivery_order_across_window_and_queue(broker, clients):
    """150 QoS 1 messages to a persistent session whose client takes them in and acknowledges
    none: it gets the first max_inflight (100); after reconnecting it gets all 150 in the
    order published [MQTT-4.6.0-1], [MQTT-4.6.0-6], those sent before with DUP 1
    [MQTT-3.3.1-1], the rest with DUP 0 [MQTT-3.3.1-3]."""
    topics, _ = names(unique("order"))
    cid = client_id("order")
    mute = clients(cid, clean_session=False, cls=Mute).open(broker)
    assert mute.sub((topics[0], 1)) == [1]
    p = clients(client_id("orderpub"))
    p.max_inflight_messages_set(200)
    p.open(broker)
    infos = [p.publish(topics[0], f"{n}".encode(), 1) for n in range(150)]
    for info in infos:
        info.wait_for_publish(WAIT)
        assert info.is_published()
    mute.wait_for(lambda c: len(c.unacked) == MAX_INFLIGHT, what="the first 100")
    time.sleep(QUIET)
    assert len(mute.unacked) == MAX_INFLIGHT, "no more than max_inflight unacknowledged"
    mute.drop()

    back = clients(cid, clean_session=False)
    assert back.start(broker) == (1, 0)
    got = back.received(150)
    time.sleep(QUIET)
    assert [int(m.payload) for m in back.messages] == list(range(150))
    assert [m.dup for m in got] == [True] * MAX_INFLIGHT + [False] * (150 - MAX_INFLIGHT)


def test_queue_survives_graceful_restart_in_order(own_broker, clients):
    """500 QoS 1 and 2 messages queued for an offline persistent session survive a graceful
    restart, each at its QoS, in order per QoS [MQTT-4.6.0-6]."""
    b = own_broker
    topics, _ = names(unique("queue"))
    cid = client_id("queue")
    c = clients(cid, clean_session=False).open(b)
    assert c.sub((topics[0], 2)) == [2]
    c.close()
    p = clients(client_id("queuepub"))
    p.max_inflight_messages_set(100)
    p.open(b)
    infos = [p.publish(topics[0], f"{n}".encode(), 1 + n % 2) for n in range(500)]
    for info in infos:
        info.wait_for_publish(WAIT)
        assert info.is_published()
    p.close()
    assert b.stop() == 0
    b.start()
    back = clients(cid, clean_session=False)
    assert back.start(b) == (1, 0)
    back.received(500)
    time.sleep(QUIET)
    got = [(int(m.payload), m.qos) for m in back.messages]
    assert sorted(got) == [(n, 1 + n % 2) for n in range(500)]
    # Order is kept per topic and QoS [MQTT-4.6.0-6]; QoS 1 and 2 messages may interleave.
    for qos in (1, 2):
        assert [n for n, q in got if q == qos] == [n for n in range(500) if 1 + n % 2 == qos]


def test_empty_payload_and_topic_levels(broker, clients):
    """An empty payload is a message like any other [MQTT-3.3.3-1]; topic levels as the
    standard's examples have them (4.7.1): 'a/#' matches 'a' [MQTT-4.7.1-2], '+' matches an
    empty level, '+' does not match '/x' but '+/+' and '/+' do, levels are case-sensitive
    and a space is a character."""
    root = unique("levels")
    c = clients(client_id("levels")).open(broker)
    filters = {
        f"{root}/sport/#": [f"{root}/sport", f"{root}/sport/tennis/p1"],
        f"{root}/a/+/c": [f"{root}/a//c"],
        f"{root}/Case": [f"{root}/Case"],
        f"{root}/with space/+": [f"{root}/with space/x"],
    }
    assert c.sub(*[(f, 1) for f in filters]) == [1] * len(filters)
    for topic in [t for ts in filters.values() for t in ts] + [f"{root}/case", f"{root}/a/b/c/d"]:
        c.pub(topic, b"", 1)
    n = sum(len(ts) for ts in filters.values())
    c.received(n)
    barrier(c, c, f"{root}/Case")
    got = [m for m in c.messages if not m.payload.startswith(b"barrier-")]
    assert sorted(m.topic for m in got) == sorted(t for ts in filters.values() for t in ts)
    assert all(m.payload == b"" for m in got)

    # The standard's own example: "/finance" has an empty first level; '+' does not match
    # it, '+/+' and '/+' do (three sessions: one copy each [MQTT-3.3.5-1]).
    plus = {f: clients(client_id("plus")).open(broker) for f in ("+", "+/+", "/+")}
    for f, sub in plus.items():
        assert sub.sub((f, 1)) == [1]
    pub = clients(client_id("pluspub")).open(broker)
    pub.pub(f"/{root}", b"finance", 1)
    for f in ("+/+", "/+"):
        plus[f].received(1)
    barrier(plus["+"], pub, root)  # a one-level topic that '+' matches
    for f, sub in plus.items():
        finance = [m.topic for m in sub.messages if m.payload == b"finance"]
        assert finance == ([] if f == "+" else [f"/{root}"]), f


def test_pingreq_keeps_an_idle_client(broker, clients):
    """A client with keep alive 2 that sends only PINGREQ (Paho sends one each keep alive) is
    answered PINGRESP [MQTT-3.12.4-1] and stays connected well beyond 1.5 times its keep
    alive."""
    c = clients(client_id("pinger")).open(broker, keepalive=2)
    time.sleep(5)
    assert c.is_connected() and c.disconnects == 0
    assert sum("Received PINGRESP" in line for line in c.log_lines) >= 2


def test_takeover_mid_flow_loses_nothing(broker, clients):
    """300 QoS 1 messages flow to a persistent session; halfway, a new connection with the
    same client ID takes it over [MQTT-3.1.4-2]: what the first connection did not
    acknowledge is resent to the second [MQTT-4.4.0-1], so between them every message
    arrives (at least once), and the second gets its part in order [MQTT-4.6.0-6]."""
    topics, _ = names(unique("takeflow"))
    cid = client_id("takeflow")
    first = clients(cid, clean_session=False).open(broker)
    assert first.sub((topics[0], 1)) == [1]
    p = clients(client_id("takeflowpub"))
    p.max_inflight_messages_set(300)
    p.open(broker)
    infos = []
    for n in range(300):
        infos.append(p.publish(topics[0], f"{n}".encode(), 1))
        if n == 150:
            first.received(20)
            second = clients(cid, clean_session=False)
            assert second.start(broker) == (1, 0)
    for info in infos:
        info.wait_for_publish(WAIT)
        assert info.is_published()
    wait_until(
        lambda: {m.payload for m in first.messages + second.messages} >= {f"{n}".encode() for n in range(300)},
        what="all 300 between the two connections",
    )
    later = [int(m.payload) for m in second.messages]
    fresh = [n for i, n in enumerate(later) if not second.messages[i].dup]
    assert fresh == sorted(fresh), "new messages to the second connection in order"


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_fan_out_burst_in_order(tls_broker, clients, qos):
    """A burst of 400 messages on one topic to six subscribers (three over TCP, one each over
    TLS, WebSocket and WebSocket over TLS): each gets every one, once and in order
    [MQTT-4.6.0-6] (the backlog limit for QoS 0 is 1000: none is dropped)."""
    b = tls_broker
    topic = f"{unique('fanout')}/burst"
    subs = [clients(client_id("fan")).open(b) for _ in range(3)]
    for transport in ("tls", "ws", "wss"):
        c = clients(client_id(f"fan{transport}"), transport="websockets" if "ws" in transport else "tcp")
        if transport != "ws":
            c.tls_set(ca_certs=str(b.ca))
        if "ws" in transport:
            c.ws_set_options(path="/mqtt")
        subs.append(c.open(b, port=b.ports[transport], host="localhost"))
    for s in subs:
        assert s.sub((topic, 2)) == [2]
    p = clients(client_id("fanpub"))
    p.max_inflight_messages_set(400)
    p.open(b)
    infos = [p.publish(topic, f"{n}".encode(), qos) for n in range(400)]
    for info in infos:
        info.wait_for_publish(WAIT)
    for s in subs:
        s.received(400)
    time.sleep(QUIET)
    for s in subs:
        assert [int(m.payload) for m in s.messages] == list(range(400))
        assert {m.qos for m in s.messages} == {qos}


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pipelined_packets_keep_their_order(broker, clients, qos):
    """Packets one client sends without waiting are carried out in order: a SUBSCRIBE then a
    PUBLISH on its topic delivers the message; a retained PUBLISH then a SUBSCRIBE delivers
    the retained message [MQTT-3.3.1-6]; an UNSUBSCRIBE then a PUBLISH delivers nothing
    [MQTT-3.10.4-2]. 30 rounds each, nothing awaited in between."""
    root = unique(f"pipe{qos}")
    c = clients(client_id("pipe"))
    c.max_inflight_messages_set(1000)
    c.open(broker)
    for n in range(30):
        c.subscribe((f"{root}/s{n}", 2))
        c.publish(f"{root}/s{n}", b"after subscribe", qos)
        c.publish(f"{root}/r{n}", b"retained", qos, retain=True)
        c.subscribe((f"{root}/r{n}", 2))
        c.subscribe((f"{root}/u{n}", 2))
        c.unsubscribe(f"{root}/u{n}")
        c.publish(f"{root}/u{n}", b"after unsubscribe", qos)
    c.wait_for(
        lambda c: sum(m.payload != b"after unsubscribe" for m in c.messages) >= 60,
        what="60 messages",
    )
    barrier(c, c, f"{root}/s0")
    got = sorted((m.topic, m.payload) for m in c.messages if not m.payload.startswith(b"barrier-"))
    want = sorted(
        [(f"{root}/s{n}", b"after subscribe") for n in range(30)]
        + [(f"{root}/r{n}", b"retained") for n in range(30)]
    )
    assert got == want
    for n in range(30):
        c.publish(f"{root}/r{n}", b"", 0, retain=True)


def test_unusual_client_ids_across_restart(own_broker, clients):
    """Client IDs beyond [0-9a-zA-Z] and 23 characters, which a server MAY accept
    [MQTT-3.1.3-5] (this one does): UTF-8, '/', '+', '#', a space, one ID a prefix of
    another, 500 characters. Each persistent session keeps its subscription and its queued
    message across a graceful restart, and gets only its own."""
    b = own_broker
    root = unique("ids")
    ids = ["ünïcødé/+#", "a b", "prefix", "prefix2", "p" * 500, "日本語のクライアント"]
    for i, cid in enumerate(ids):
        c = clients(cid, clean_session=False).open(b)
        assert c.sub((f"{root}/{i}", 1)) == [1]
        c.close()
    p = clients(client_id("idspub")).open(b)
    for i in range(len(ids)):
        p.pub(f"{root}/{i}", f"for {i}".encode(), 1)
    p.close()
    assert b.stop() == 0
    b.start()
    back = []
    for i, cid in enumerate(ids):
        c = clients(cid, clean_session=False)
        assert c.start(b) == (1, 0), cid
        c.received(1)
        back.append(c)
    time.sleep(QUIET)
    assert [[m.payload for m in c.messages] for c in back] == [[f"for {i}".encode()] for i in range(len(ids))]
