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
        [ListenerConfig::tcp("127.0.0.1:1883".parse().unwrap())]
    );
    assert_eq!(c.max_connections, 100_000);
    assert_eq!(c.max_retained, 1_000_000);
    assert_eq!(c.max_retained_bytes, 1 << 30);
    assert_eq!(c.max_publish_rate, 0);
    assert_eq!(c.publish_rate(), None);
    assert_eq!(c.tcp_keepalive, Some(Duration::from_secs(60)));
    assert!(c.allow_anonymous);
    assert_eq!(c.password_file, None);
    assert_eq!(c.acl_file, None);
    assert_eq!(c.hash_params(), crate::auth::HashParams::DEFAULT);
    assert_eq!(c.sys_interval, Duration::from_secs(10));
    assert_eq!(c.idle_spin_us, Config::DEFAULT_IDLE_SPIN_US);
    assert_eq!(c.metrics_address, None);
    assert_eq!(c.data_dir, Path::new("./hermes-data"));
    assert!(!c.memory);
    assert_eq!(c.max_packet_size, 1_048_576);
    assert_eq!(c.max_inflight.get(), 100);
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
        max_connections = 7
        max_retained = 0
        max_retained_bytes = 1000
        max_publish_rate = 100
        publish_burst = 10
        tcp_keepalive = "off"
        allow_anonymous = false
        password_file = "/etc/hermes-mqtt/passwd"
        acl_file = "/etc/hermes-mqtt/acl"
        argon2_memory_kib = 8
        argon2_iterations = 1
        argon2_parallelism = 1
        idle_spin_us = 0
        sys_interval = "0s"
        metrics_address = "127.0.0.1:9883"
        log_level = "trace"
        "#,
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].address.port(), 11883);
    assert_eq!(c.max_connections, 7);
    assert_eq!((c.max_retained, c.max_retained_bytes), (0, 1000));
    assert_eq!(c.publish_rate(), Some((100, 10)));
    assert_eq!(c.tcp_keepalive, None);
    assert_eq!(
        c.password_file.as_deref(),
        Some(Path::new("/etc/hermes-mqtt/passwd"))
    );
    assert_eq!(
        c.acl_file.as_deref(),
        Some(Path::new("/etc/hermes-mqtt/acl"))
    );
    assert_eq!(
        c.hash_params(),
        crate::auth::HashParams {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1
        }
    );
    assert_eq!(c.idle_spin_us, 0);
    assert_eq!(c.sys_interval, Duration::ZERO);
    assert_eq!(c.metrics_address, Some("127.0.0.1:9883".parse().unwrap()));
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
        ("max_inflight = 0", "max_inflight", "1 to 65535"),
        ("max_inflight = 65536", "max_inflight", "65536"),
        ("max_queued = -1", "max_queued", "-1"),
        ("max_queued = \"many\"", "max_queued", "string"),
        ("memory = \"yes\"", "memory", "true or false"),
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
        ("listeners = \"127.0.0.1:1883\"", "listeners", "a list"),
        ("argon2_memory_kib = 4", "argon2_memory_kib", "at least 8"),
        ("argon2_iterations = 0", "argon2_iterations", "at least 1"),
        ("argon2_parallelism = 256", "argon2_parallelism", "1 to 255"),
        ("sys_interval = \"often\"", "sys_interval", "not a duration"),
        ("tcp_keepalive = \"10ms\"", "tcp_keepalive", "1s"),
        (
            "metrics_address = \"localhost\"",
            "metrics_address",
            "IP address",
        ),
        ("max_connections = -1", "max_connections", "-1"),
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
    // The line of the bad element.
    assert!(e.contains("line 3, `listeners`: \"nowhere\""), "{e}");
}

/// A value of the wrong kind says, in the words of someone editing the file, the key, what it
/// takes, what the file gives, and the line (it said "invalid type: string \"ten\", expected
/// usize").
#[test]
fn a_value_of_the_wrong_kind_says_what_the_key_takes_and_what_was_given() {
    let toml = "memory = true\nmax_inflight = \"ten\"\n";
    let e = Config::from_toml(toml).unwrap_err();
    assert!(
        matches!(&e, ConfigError::WrongKind { key, line: 2, .. } if key == "max_inflight"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "line 2, `max_inflight`: expected a whole number from 1 to 65535, but the file gives \
         the string \"ten\" (the keys and their values are in the \"Configuration\" table of \
         the hermes-mqtt README)"
    );
    for (toml, expected) in [
        (
            "max_queued = \"ten\"",
            "line 1, `max_queued`: expected a whole number, 0 or more, but the file gives the \
             string \"ten\"",
        ),
        (
            "max_queued = -1",
            "line 1, `max_queued`: expected a whole number, 0 or more, but the file gives the \
             number -1",
        ),
        (
            "max_queued = 1.5",
            "line 1, `max_queued`: expected a whole number, 0 or more, but the file gives the \
             number 1.5",
        ),
        (
            "keep_alive_grace = \"2\"",
            "line 1, `keep_alive_grace`: expected a number, but the file gives the string \"2\"",
        ),
        (
            "allow_anonymous = 1",
            "line 1, `allow_anonymous`: expected true or false, but the file gives the number 1",
        ),
        (
            "max_queued = true",
            "line 1, `max_queued`: expected a whole number, 0 or more, but the file gives true",
        ),
        (
            "data_dir = 5",
            "line 1, `data_dir`: expected a path, in quotes, but the file gives the number 5",
        ),
    ] {
        let e = error(toml);
        assert!(e.starts_with(expected), "{toml}: {e}");
    }
}

#[test]
fn metrics_at_a_listeners_address_is_an_error() {
    let e = Config::from_toml(
        "listeners = [\"127.0.0.1:1883\"]\nmetrics_address = \"127.0.0.1:1883\"\n",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::MetricsOnListener { .. }), "{e:?}");
    assert!(e.to_string().contains("a port of its own"), "{e}");
    // Port 0 is a free port each.
    Config::from_toml("listeners = [\"127.0.0.1:0\"]\nmetrics_address = \"127.0.0.1:0\"\n")
        .unwrap();
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

#[test]
fn listener_tables() {
    let c = Config::from_toml(
        r#"
        [[listeners]]
        address = "0.0.0.0:1883"

        [[listeners]]
        address = "0.0.0.0:8883"
        kind = "tls"
        cert = "cert.pem"
        key = "key.pem"
        max_connections = 10

        [[listeners]]
        address = "[::]:8080"
        kind = "ws"

        [[listeners]]
        address = "0.0.0.0:8081"
        kind = "wss"
        cert = "cert.pem"
        key = "key.pem"
        path = "/ws"
        "#,
    )
    .unwrap();
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        c.listeners,
        [
            ListenerConfig::tcp(addr("0.0.0.0:1883")),
            ListenerConfig::tls(addr("0.0.0.0:8883"), "cert.pem", "key.pem")
                .with_max_connections(10),
            ListenerConfig::ws(addr("[::]:8080")),
            ListenerConfig::wss(addr("0.0.0.0:8081"), "cert.pem", "key.pem").with_path("/ws"),
        ]
    );
    // Strings, as before tables: TCP listeners.
    let c = Config::from_toml(r#"listeners = ["127.0.0.1:1883", "[::1]:1884"]"#).unwrap();
    assert!(c.listeners.iter().all(|l| l.kind == ListenerKind::Tcp));
    assert_eq!(
        c.listeners[0].url(c.listeners[0].address),
        "mqtt://127.0.0.1:1883"
    );
    // Port 0 (a free port each) may be given for several listeners.
    let c = Config::from_toml(r#"listeners = ["127.0.0.1:0", "127.0.0.1:0"]"#).unwrap();
    assert_eq!(c.listeners.len(), 2);
}

#[test]
fn bad_listeners_name_the_key() {
    for (toml, key, what) in [
        ("[[listeners]]\nkind = \"tls\"\n", "listeners", "address"),
        (
            "[[listeners]]\naddress = \"0.0.0.0:8883\"\nkind = \"tls\"\n",
            "listeners",
            "needs `cert`",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:8883\"\nkind = \"wss\"\ncert = \"c.pem\"\n",
            "listeners",
            "needs `key`",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:1883\"\ncert = \"c.pem\"\n",
            "listeners",
            "for \"tls\" and \"wss\"",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:1883\"\npath = \"/mqtt\"\n",
            "listeners",
            "`path`",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:8080\"\nkind = \"ws\"\npath = \"mqtt\"\n",
            "listeners",
            "start with '/'",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:1883\"\nkind = \"quic\"\n",
            "kind",
            "quic",
        ),
        (
            "listeners = [\"127.0.0.1:1883\", \"127.0.0.1:8883\", \"127.0.0.1:1883\"]\n",
            "listeners",
            "127.0.0.1:1883 is given twice",
        ),
        (
            "[[listeners]]\naddress = \"[::]:8080\"\nkind = \"ws\"\n\
             [[listeners]]\naddress = \"[::]:8080\"\nkind = \"wss\"\ncert = \"c\"\nkey = \"k\"\n",
            "listeners",
            "given twice",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:1883\"\nport = 1883\n",
            "port",
            "unknown field",
        ),
        (
            "[[listeners]]\naddress = \"localhost:1883\"\n",
            "listeners",
            "not an IP address",
        ),
    ] {
        let e = error(toml);
        assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
        assert!(e.contains(what), "{toml}: {e}");
    }
}

#[test]
fn users_in_the_configuration_say_how_to_migrate() {
    let e = error("allow_anonymous = false\n\n[users]\nalice = \"secret\"\n");
    assert!(e.contains("`users`"), "{e}");
    assert!(e.contains("hermes-mqtt passwd FILE USER"), "{e}");
    assert!(e.contains("password_file"), "{e}");
}

#[test]
fn the_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hermes-mqtt.toml");
    let c = Config::load(&path).unwrap();
    let kinds: Vec<_> = c.listeners.iter().map(|l| l.kind).collect();
    assert_eq!(kinds, [ListenerKind::Tcp, ListenerKind::Ws]);
    // Every key it sets is the default.
    let defaults = Config {
        listeners: c.listeners.clone(),
        ..Config::default()
    };
    assert_eq!(c, defaults);
    // Its commented TLS listeners are valid once uncommented.
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("# [[listeners]]").unwrap();
    let (head, tail) = text.split_at(start);
    let tail: Vec<&str> = tail
        .lines()
        .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
        .collect();
    let uncommented = format!("{head}{}", tail.join("\n"));
    let c = Config::from_toml(&uncommented).unwrap();
    let kinds: Vec<_> = c.listeners.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [
            ListenerKind::Tcp,
            ListenerKind::Ws,
            ListenerKind::Tls,
            ListenerKind::Wss
        ]
    );
}
