//! The configuration: defaults, every key, and errors that name the key.

use super::*;

#[test]
fn empty_file_is_the_default() {
    assert_eq!(Config::from_toml("").unwrap(), Config::default());
    assert_eq!(
        Config::from_toml("# nothing\n\n").unwrap(),
        Config::default()
    );
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(
        c.listeners,
        ["127.0.0.1:1883".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.data_dir, Path::new("./hermes-data"));
    assert!(!c.memory);
    assert_eq!(c.max_packet_size, 1_048_576);
    assert_eq!(c.max_inflight.get(), 20);
    assert_eq!(c.max_queued, 1000);
    assert_eq!(
        c.session_expiry,
        SessionExpiry::After(Duration::from_secs(7200))
    );
    assert_eq!(c.keep_alive_grace, 1.5);
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.max_qos0_backlog, 1000);
    assert_eq!(c.max_subscriptions, 10_000);
    assert_eq!(c.session_limits(), Limits::default());
}

#[test]
fn every_key() {
    let c = Config::from_toml(
        r#"
        listeners = [
            "0.0.0.0:1883",
            "[::1]:11883",
        ]
        data_dir = "/var/lib/hermes"
        memory = true
        max_packet_size = 268435460
        max_inflight = 1
        max_queued = 0
        session_expiry = "never"
        keep_alive_grace = 2
        connect_timeout = "1m"
        max_qos0_backlog = 5
        max_subscriptions = 3
        allow_anonymous = false
        log_level = "trace"

        [users]
        alice = "secret"
        "#,
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].port(), 11883);
    assert_eq!(c.data_dir, Path::new("/var/lib/hermes"));
    assert!(c.memory);
    assert_eq!(c.max_packet_size, MAX_PACKET_SIZE);
    assert_eq!(c.max_inflight.get(), 1);
    assert_eq!(c.max_queued, 0);
    assert_eq!(c.session_expiry, SessionExpiry::Never);
    assert_eq!(c.keep_alive_grace, 2.0);
    assert_eq!(c.connect_timeout, Duration::from_secs(60));
    assert_eq!(c.max_qos0_backlog, 5);
    assert_eq!(c.max_subscriptions, 3);
    assert!(!c.allow_anonymous);
    assert_eq!(c.users.get("alice").map(String::as_str), Some("secret"));
    assert_eq!(c.log_level, LogLevel::Trace);
    for bad in [
        "connect_timeout = \"0s\"",
        "max_qos0_backlog = 0",
        "max_subscriptions = 0",
    ] {
        let key = bad.split(' ').next().unwrap();
        assert!(error(bad).contains(&format!("`{key}`")), "{bad}");
    }
}

/// Both the key and what to do are in the message.
fn error(toml: &str) -> String {
    Config::from_toml(toml).unwrap_err().to_string()
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let e = error("max_inflight = 5\nmax_inflite = 5\n");
    assert!(e.contains("line 2, `max_inflite`"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    assert!(e.contains("max_inflight"), "{e}: lists the keys there are");
    assert!(e.contains("README"), "{e}");
}

#[test]
fn bad_values_are_errors_naming_the_key() {
    for (toml, key, what) in [
        ("max_inflight = 0", "max_inflight", "nonzero"),
        ("max_inflight = 65536", "max_inflight", "65536"),
        ("max_queued = -1", "max_queued", "-1"),
        ("max_queued = \"many\"", "max_queued", "string"),
        ("memory = \"yes\"", "memory", "bool"),
        ("max_packet_size = 1", "max_packet_size", "2 to 268435460"),
        (
            "max_packet_size = 268435461",
            "max_packet_size",
            "268435461",
        ),
        ("keep_alive_grace = 0.5", "keep_alive_grace", "1 to 100"),
        ("keep_alive_grace = nan", "keep_alive_grace", "NaN"),
        ("session_expiry = \"2 hours\"", "session_expiry", "\"2h\""),
        ("session_expiry = 7200", "session_expiry", "string"),
        ("log_level = \"verbose\"", "log_level", "`trace`"),
        ("listeners = []", "listeners", "at least one"),
        ("listeners = \"127.0.0.1:1883\"", "listeners", "sequence"),
        (
            "listeners = [\n  \"127.0.0.1:1883\",\n  \"localhost:1883\",\n]",
            "listeners",
            "localhost",
        ),
    ] {
        let e = error(toml);
        assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
        assert!(e.contains(what), "{toml}: {e}");
    }
    let e = error("memory = true\nlisteners = [\n  \"nowhere\",\n]");
    // The line where the array starts.
    assert!(e.contains("line 2, `listeners`: \"nowhere\""), "{e}");
}

#[test]
fn syntax_error() {
    let e = error("memory = true\n[[[");
    assert!(e.starts_with("line 2"), "{e}");
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("hermes-mqtt-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hermes-mqtt.toml");
    std::fs::write(&path, "max_queued = 5\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().max_queued, 5);
    std::fs::write(&path, "max_queued = five\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: line 1, `max_queued`", path.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("cannot read the configuration file"), "{e}");
}

#[test]
fn durations() {
    let secs = Duration::from_secs;
    for (s, d) in [
        ("2h", secs(7200)),
        ("30s", secs(30)),
        ("1h30m", secs(5400)),
        ("1d 12h", secs(129_600)),
        ("0s", secs(0)),
        ("1500ms", Duration::from_millis(1500)),
        (" 5m ", secs(300)),
    ] {
        assert_eq!(parse_duration(s), Ok(d), "{s}");
    }
    for bad in [
        "",
        "90",
        "h",
        "1.5h",
        "-1s",
        "1w",
        "1h30",
        "99999999999999999999d",
        "200000000000000d",
    ] {
        let e = parse_duration(bad).unwrap_err();
        assert!(e.to_string().contains("such as \"2h\""), "{bad}: {e}");
    }
}

#[test]
fn session_expiry_reads_and_writes() {
    for s in ["never", "2h", "1d", "90m", "45s", "1500ms", "0s"] {
        let expiry: SessionExpiry = s.parse().unwrap();
        assert_eq!(expiry.to_string(), s);
    }
    assert_eq!(SessionExpiry::Never.duration(), None);
    assert_eq!(
        "3h".parse::<SessionExpiry>().unwrap().duration(),
        Some(Duration::from_secs(10_800))
    );
}

/// [MQTT-3.1.2-24]: one and a half times the keep alive; 0 turns it off.
#[test]
fn keep_alive_timeout_mqtt_3_1_2_24() {
    let c = Config::default();
    assert_eq!(c.keep_alive_timeout(0), None);
    assert_eq!(c.keep_alive_timeout(60), Some(Duration::from_secs(90)));
    assert_eq!(c.keep_alive_timeout(1), Some(Duration::from_millis(1500)));
    assert_eq!(
        c.keep_alive_timeout(u16::MAX),
        Some(Duration::from_secs_f64(98_302.5))
    );
    let odd = Config {
        keep_alive_grace: f64::NAN,
        ..Config::default()
    };
    assert_eq!(
        odd.keep_alive_timeout(10),
        Some(Duration::MAX),
        "no panic on a bad factor"
    );
}

#[test]
fn log_levels() {
    for (s, level) in [
        ("off", LogLevel::Off),
        ("warn", LogLevel::Warn),
        ("debug", LogLevel::Debug),
    ] {
        let c = Config::from_toml(&format!("log_level = {s:?}")).unwrap();
        assert_eq!(c.log_level, level);
        assert_eq!(level.to_string(), s);
    }
}
