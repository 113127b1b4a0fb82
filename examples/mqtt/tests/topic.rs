//! Topic names, topic filters and matching, with the examples of [4.7].

use hermes_mqtt::string::StringError;
use hermes_mqtt::topic::{TopicError, matches};
use hermes_mqtt::{TopicFilter, TopicName};

#[test]
fn topic_names() {
    for ok in [
        "a",
        "/",
        "//",
        "/finance",
        "sport/",
        "Accounts payable",
        "$SYS/x",
        "€/ü",
        " ",
    ] {
        assert_eq!(ok.parse::<TopicName>().unwrap().as_str(), ok);
    }
    let name = |s: &str| s.parse::<TopicName>();
    assert_eq!(name(""), Err(TopicError::Empty));
    assert_eq!(name("a/+"), Err(TopicError::WildcardInName));
    assert_eq!(name("#"), Err(TopicError::WildcardInName));
    assert_eq!(name("a+b"), Err(TopicError::WildcardInName));
    assert_eq!(
        name("a\0"),
        Err(TopicError::String(StringError::NullCharacter))
    );
    let long = "a".repeat(65_536);
    assert_eq!(
        name(&long),
        Err(TopicError::String(StringError::TooLong { len: 65_536 }))
    );
    assert!(name(&long[1..]).is_ok());
    assert!(TopicName::from_static("$SYS/broker").is_system());
    assert!(!TopicName::from_static("a/$SYS").is_system());
    let topic = TopicName::from_static("/a//b/");
    let levels: Vec<_> = topic.levels().collect();
    assert_eq!(levels, [&b""[..], b"a", b"", b"b", b""]);
}

#[test]
fn topic_filters() {
    for ok in [
        "#",
        "+",
        "+/+",
        "/+",
        "sport/#",
        "sport/tennis/#",
        "+/tennis/#",
        "sport/+/player1",
        "/",
        "a//b",
        "$SYS/#",
        "+/",
        "/#",
    ] {
        assert_eq!(ok.parse::<TopicFilter>().unwrap().as_str(), ok);
    }
    let filter = |s: &str| s.parse::<TopicFilter>();
    let multi = Err(TopicError::MisplacedMultiLevelWildcard);
    let single = Err(TopicError::MisplacedSingleLevelWildcard);
    // The invalid examples of [4.7.1.2] and [4.7.1.3].
    assert_eq!(filter("sport/tennis#"), multi);
    assert_eq!(filter("sport/tennis/#/ranking"), multi);
    assert_eq!(filter("sport+"), single);
    assert_eq!(filter("##"), multi);
    assert_eq!(filter("#/"), multi);
    assert_eq!(filter("++"), single);
    assert_eq!(filter("a/+b"), single);
    assert_eq!(filter(""), Err(TopicError::Empty));
    assert_eq!(
        filter("a\0"),
        Err(TopicError::String(StringError::NullCharacter))
    );
    assert!(TopicFilter::from_static("a/+/b").has_wildcards());
    assert!(!TopicFilter::from_static("a/b").has_wildcards());
}

/// (filter, topic, matches?): the examples of [4.7] first, then edge cases.
const TABLE: &[(&str, &str, bool)] = &[
    // [4.7.1.2] the multi-level wildcard.
    ("sport/tennis/player1/#", "sport/tennis/player1", true),
    (
        "sport/tennis/player1/#",
        "sport/tennis/player1/ranking",
        true,
    ),
    (
        "sport/tennis/player1/#",
        "sport/tennis/player1/score/wimbledon",
        true,
    ),
    ("sport/#", "sport", true),
    ("#", "sport/tennis", true),
    ("#", "/", true),
    // [4.7.1.3] the single-level wildcard.
    ("sport/tennis/+", "sport/tennis/player1", true),
    ("sport/tennis/+", "sport/tennis/player2", true),
    ("sport/tennis/+", "sport/tennis/player1/ranking", false),
    ("sport/+", "sport", false),
    ("sport/+", "sport/", true),
    ("+/+", "/finance", true),
    ("/+", "/finance", true),
    ("+", "/finance", false),
    ("+/tennis/#", "sport/tennis/player1", true),
    ("+/tennis/#", "sport/tennis", true),
    // [4.7.2] topics beginning with $ [MQTT-4.7.2-1].
    ("#", "$SYS/monitor/Clients", false),
    ("+/monitor/Clients", "$SYS/monitor/Clients", false),
    ("$SYS/#", "$SYS/monitor/Clients", true),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
    ("+", "$SYS", false),
    ("$SYS/#", "$SYS", true),
    ("a/#", "a/$SYS", true),
    ("+/$x", "a/$x", true),
    // [4.7.3] case, spaces and leading '/' are significant; no normalization [MQTT-4.7.3-4].
    ("ACCOUNTS", "Accounts", false),
    ("Accounts payable", "Accounts payable", true),
    ("/finance", "finance", false),
    ("finance", "/finance", false),
    ("e\u{301}", "\u{e9}", false),
    // Empty levels.
    ("a//b", "a//b", true),
    ("a/+/b", "a//b", true),
    ("a/+", "a/", true),
    ("+/+", "/", true),
    ("+", "/", false),
    ("/", "/", true),
    ("+//+", "a//", true),
    ("a/#", "a/", true),
    ("a/b", "a/b/", false),
    ("a/b/", "a/b", false),
    ("a", "a/b", false),
    ("a/b", "a", false),
    ("#", "a", true),
    ("+/#", "a", true),
    ("+/+/#", "a", false),
];

#[test]
fn matching_table() {
    for &(filter, topic, expected) in TABLE {
        let filter = TopicFilter::try_from(filter).unwrap();
        let topic = TopicName::try_from(topic).unwrap();
        assert_eq!(
            matches(&filter, &topic),
            expected,
            "{filter} against {topic}"
        );
        assert_eq!(filter.matches(&topic), expected);
    }
}
