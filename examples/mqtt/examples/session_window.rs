//! The sans-IO session's outgoing QoS 1 (or 2) flow with a full in-flight window of 100: each
//! step acknowledges the oldest message in flight (PUBACK, or PUBREC and PUBCOMP) and
//! delivers a new one, which takes a free packet identifier. For counting instructions per
//! step (BENCHMARKS.md), the difference of two runs:
//!
//! ```sh
//! cargo build --release -p hermes-mqtt --example session_window
//! valgrind --tool=callgrind target/release/examples/session_window 1 10000    # QoS 1, steps
//! valgrind --tool=callgrind target/release/examples/session_window 1 110000
//! ```
use bytes::Bytes;
use hermes_mqtt::session::{Limits, Output, Session};
use hermes_mqtt::{Message, Packet, QoS, TopicName};
use std::hint::black_box;

fn main() {
    let qos2 = std::env::args().nth(1).as_deref() == Some("2");
    let steps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut session = Session::new(Limits::default());
    let mut out = Vec::new();
    let _ = session.connect(true, &mut out);
    out.clear();
    let qos = if qos2 {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    };
    let message = Message {
        topic: TopicName::from_static("t/1"),
        payload: Bytes::from_static(b"payload"),
        qos,
        retain: false,
    };
    let mut ids = std::collections::VecDeque::new();
    for _ in 0..100 {
        let _ = session.deliver(message.clone(), qos, &mut out);
        for o in out.drain(..) {
            if let Output::Send(Packet::Publish(p)) = o {
                ids.push_back(p.qos.packet_id().unwrap());
            }
        }
    }
    for _ in 0..steps {
        let id = ids.pop_front().unwrap();
        if qos2 {
            black_box(session.on_pubrec(id, &mut out));
            out.clear();
            black_box(session.on_pubcomp(id, &mut out));
        } else {
            black_box(session.on_puback(id, &mut out));
        }
        let _ = session.deliver(message.clone(), qos, &mut out);
        for o in out.drain(..) {
            if let Output::Send(Packet::Publish(p)) = o {
                ids.push_back(p.qos.packet_id().unwrap());
            }
        }
    }
    assert_eq!(session.inflight_len(), 100);
}
