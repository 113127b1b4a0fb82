//! Authorization: the access control list file, in the spirit of Mosquitto's `acl_file`.
//!
//! ```text
//! # Lines before any `user` or `client` line: anonymous clients (no user name).
//! topic read public/#
//!
//! # The user named in CONNECT (authenticated by the password file).
//! user alice
//! topic readwrite alice/#
//! topic read $SYS/#
//!
//! # A client identifier, whoever its user.
//! client sensor-17
//! topic write sensors/17/#
//!
//! # Every client: %u is its user name, %c its client identifier.
//! pattern readwrite users/%u/#
//! pattern write clients/%c/status
//! pattern deny secret/#
//! ```
//!
//! Access is `read` (subscribe and receive), `write` (publish), `readwrite` (both; the default
//! when the word is left out) or `deny` (neither, whatever else grants it). A filter with a
//! space in it needs its access word (so that a misspelt one, `topic dney secret/#`, is an
//! error rather than a grant). A `#` at the start of a line or after a space or tab starts a
//! comment, but for the filter `#` itself (`topic read #`; any other `#` of a filter follows
//! `/`). With an ACL file, what no line grants is denied.
//!
//! - A client's rules: the anonymous section if it has no user name, else its `user` section;
//!   the `client` section of its identifier; and every `pattern` line (one with `%u` only for
//!   clients with a user name). A user name or client identifier containing `/`, `+` or `#`
//!   is not substituted into a granting pattern (it would reach other clients' topics): the
//!   pattern grants it nothing.
//! - PUBLISH to a topic: allowed if a write rule matches it and no deny rule does. A denied
//!   PUBLISH is acknowledged as usual (the client is not stuck) but not published, and counted.
//! - SUBSCRIBE to a filter: granted if a read rule covers every topic the filter can match
//!   (`sensors/#` covers `sensors/+/temp`) and no deny rule matches any of them; otherwise
//!   that filter's SUBACK return code is 0x80 [MQTT-3.9.3-1].
//! - A will whose topic the client may not publish to refuses its CONNECT with 0x05.
//!
//! ```
//! use hermes_mqtt::acl::AclFile;
//! use hermes_mqtt::{TopicFilter, TopicName};
//!
//! let acl = AclFile::parse("user alice\ntopic readwrite alice/#\npattern read users/%u/#\n").unwrap();
//! let alice = acl.for_client(Some("alice"), "phone");
//! assert!(alice.can_publish(&TopicName::from_static("alice/notes")));
//! assert!(alice.can_subscribe(&TopicFilter::from_static("users/alice/+")));
//! assert!(!alice.can_subscribe(&TopicFilter::from_static("users/#")));
//! let anonymous = acl.for_client(None, "x");
//! assert!(!anonymous.can_publish(&TopicName::from_static("alice/notes")));
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::LineError;
use crate::topic::{TopicFilter, TopicName};

/// What a rule grants (or denies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Subscribe and receive.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, whatever other rules grant.
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite)
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    /// As written: a topic filter, with `%u` and `%c` in patterns.
    topic: String,
}

/// An ACL file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// The file cannot be read.
    #[error("cannot read the ACL file {}: {source} (check the path and its permissions)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a rule.
    #[error(
        "{0} (lines are `user NAME`, `client ID`, `topic [read|write|readwrite|deny] FILTER` \
         or `pattern [read|write|readwrite|deny] FILTER`)"
    )]
    Line(LineError),
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    clients: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

enum Section {
    Anonymous,
    User(String),
    Client(String),
}

impl AclFile {
    /// Reads the file at `path`; errors name the file and line.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            AclError::Line(line) => AclError::Line(line.in_file(path)),
            other => other,
        })
    }

    /// Reads an ACL file's text.
    pub fn parse(text: &str) -> Result<Self, AclError> {
        let mut acl = AclFile::default();
        let mut section = Section::Anonymous;
        for (i, line) in text.lines().enumerate() {
            let bad = |message: String| AclError::Line(LineError::new(i + 1, message));
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" | "client" => {
                    let rest = without_comment(rest, 0);
                    if rest.is_empty() {
                        return Err(bad(format!("`{word}` needs a name")));
                    }
                    section = if word == "user" {
                        Section::User(rest.to_owned())
                    } else {
                        Section::Client(rest.to_owned())
                    };
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(bad)?;
                    if word == "pattern" {
                        acl.patterns.push(rule);
                        continue;
                    }
                    if rule.topic.contains("%u") || rule.topic.contains("%c") {
                        return Err(bad(
                            "%u and %c are substituted in `pattern` lines only".to_owned()
                        ));
                    }
                    match &section {
                        Section::Anonymous => acl.anonymous.push(rule),
                        Section::User(name) => {
                            acl.users.entry(name.clone()).or_default().push(rule);
                        }
                        Section::Client(id) => {
                            acl.clients.entry(id.clone()).or_default().push(rule);
                        }
                    }
                }
                other => return Err(bad(format!("unknown word {other:?}"))),
            }
        }
        Ok(acl)
    }

    /// The rules of a client with user name `user` (`None`: anonymous) and identifier
    /// `client_id`, compiled for checks.
    #[must_use]
    pub fn for_client(&self, user: Option<&str>, client_id: &str) -> ClientAcl {
        let mut acl = ClientAcl::default();
        let own = match user {
            None => self.anonymous.iter().collect::<Vec<_>>(),
            Some(name) => self.users.get(name).into_iter().flatten().collect(),
        };
        let client = self.clients.get(client_id).into_iter().flatten();
        for rule in own.into_iter().chain(client) {
            acl.add(rule.access, &rule.topic);
        }
        let unsafe_value = |v: &str| v.contains(['/', '+', '#']);
        for rule in &self.patterns {
            let needs_user = rule.topic.contains("%u");
            if needs_user && user.is_none() {
                continue;
            }
            let user = user.unwrap_or_default();
            let uses_client = rule.topic.contains("%c");
            let risky =
                (needs_user && unsafe_value(user)) || (uses_client && unsafe_value(client_id));
            if risky && rule.access != Access::Deny {
                continue;
            }
            let topic = rule.topic.replace("%u", user).replace("%c", client_id);
            acl.add(rule.access, &topic);
        }
        acl
    }
}

/// `text` without its comment: from a `#` at or after byte `from` that starts `text` or
/// follows a space or tab, to the end. Past a filter's first character, such a `#` is never
/// part of it (`#` fills a whole level: the filter `#`, or after `/`).
fn without_comment(text: &str, from: usize) -> &str {
    let mut previous = None;
    for (i, c) in text.char_indices() {
        if i >= from && c == '#' && previous.is_none_or(char::is_whitespace) {
            return text[..i].trim_end();
        }
        previous = Some(c);
    }
    text
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, topic) = match first {
        "read" => (Access::Read, after.trim()),
        "write" => (Access::Write, after.trim()),
        "readwrite" => (Access::ReadWrite, after.trim()),
        "deny" => (Access::Deny, after.trim()),
        _ => {
            // Two words without an access word first: most likely a misspelt one (`topic
            // dney secret/#` would otherwise grant readwrite on "dney secret/#" and deny
            // nothing).
            let topic = without_comment(rest, 1);
            if topic.contains(char::is_whitespace) {
                return Err(format!(
                    "{first:?} is not an access: give read, write, readwrite or deny before \
                     the filter (a filter with a space in it needs its access word first)"
                ));
            }
            (Access::ReadWrite, topic)
        }
    };
    // The filter itself may be `#`; a later `#` after a space starts a comment.
    let topic = without_comment(topic, 1);
    if topic.is_empty() {
        return Err("the rule has no topic filter".to_owned());
    }
    // Validate with placeholders substituted by a plain level.
    let probe = topic.replace("%u", "u").replace("%c", "c");
    if probe.parse::<TopicFilter>().is_err() {
        return Err(format!("{topic:?} is not a topic filter"));
    }
    Ok(Rule {
        access,
        topic: topic.to_owned(),
    })
}

/// One client's rules, compiled: what it may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAcl {
    read: Vec<TopicFilter>,
    write: Vec<TopicFilter>,
    deny: Vec<TopicFilter>,
    /// A deny rule could not be compiled (a substituted name made it invalid): deny all.
    deny_all: bool,
}

impl ClientAcl {
    fn add(&mut self, access: Access, topic: &str) {
        let Ok(filter) = topic.parse::<TopicFilter>() else {
            if access == Access::Deny {
                self.deny_all = true;
            }
            return;
        };
        if access == Access::Deny {
            self.deny.push(filter);
            return;
        }
        if access.reads() {
            self.read.push(filter.clone());
        }
        if access.writes() {
            self.write.push(filter);
        }
    }

    /// Whether the client may publish to `topic`.
    #[must_use]
    pub fn can_publish(&self, topic: &TopicName) -> bool {
        !self.deny_all
            && !self.deny.iter().any(|d| d.matches(topic))
            && self.write.iter().any(|w| w.matches(topic))
    }

    /// Whether the client may subscribe to `filter`: a read rule covers it and no deny rule
    /// overlaps it.
    #[must_use]
    pub fn can_subscribe(&self, filter: &TopicFilter) -> bool {
        !self.deny_all
            && !self.deny.iter().any(|d| overlaps(d, filter))
            && self.read.iter().any(|r| covers(r, filter))
    }

    /// Whether the client may receive a message on `topic` (for subscriptions made under
    /// another user of the same persistent session).
    #[must_use]
    pub fn can_read(&self, topic: &TopicName) -> bool {
        !self.deny_all
            && !self.deny.iter().any(|d| d.matches(topic))
            && self.read.iter().any(|r| r.matches(topic))
    }
}

const MULTI: &[u8] = b"#";
const SINGLE: &[u8] = b"+";

/// Whether the first level of a filter keeps it off '$' topics: a wildcard there does not
/// match them [MQTT-4.7.2-1].
fn dollar(level: &[u8]) -> bool {
    level.first() == Some(&b'$')
}

/// Whether every topic `filter` matches is matched by `rule`.
#[must_use]
pub fn covers(rule: &TopicFilter, filter: &TopicFilter) -> bool {
    let r: Vec<&[u8]> = rule.levels().collect();
    let f: Vec<&[u8]> = filter.levels().collect();
    for (i, &rl) in r.iter().enumerate() {
        if rl == MULTI {
            // The rest of the filter, even nothing ("a/#" matches "a"); but a wildcard first
            // level does not match '$' topics.
            return !(i == 0 && f.first().is_some_and(|l| dollar(l)));
        }
        let Some(&fl) = f.get(i) else {
            return false;
        };
        if fl == MULTI {
            return false;
        }
        if rl == SINGLE {
            if i == 0 && dollar(fl) {
                return false;
            }
            continue;
        }
        if fl == SINGLE || rl != fl {
            return false;
        }
    }
    r.len() == f.len()
}

/// Whether some topic is matched by both filters.
#[must_use]
pub fn overlaps(a: &TopicFilter, b: &TopicFilter) -> bool {
    let x: Vec<&[u8]> = a.levels().collect();
    let y: Vec<&[u8]> = b.levels().collect();
    for i in 0..x.len().max(y.len()) {
        match (x.get(i).copied(), y.get(i).copied()) {
            (Some(MULTI), other) | (other, Some(MULTI)) => {
                return !(i == 0 && other.is_some_and(dollar));
            }
            (Some(p), Some(q)) => {
                if p == SINGLE || q == SINGLE {
                    let literal = if p == SINGLE { q } else { p };
                    if i == 0 && dollar(literal) {
                        return false;
                    }
                } else if p != q {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        s.parse().unwrap()
    }

    fn t(s: &str) -> TopicName {
        s.parse().unwrap()
    }

    #[test]
    fn covers_filters() {
        for (rule, filter, expected) in [
            ("#", "a/b", true),
            ("#", "#", true),
            ("#", "$SYS/x", false),
            ("#", "+/x", true),
            ("$SYS/#", "$SYS/broker/+", true),
            ("+/x", "$SYS/x", false),
            ("a/#", "a", true),
            ("a/#", "a/+/c", true),
            ("a/#", "a/#", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a", "a/#", false),
            ("+/+", "a/b", true),
            ("+", "a/b", false),
        ] {
            assert_eq!(
                covers(&f(rule), &f(filter)),
                expected,
                "{rule} covers {filter}"
            );
        }
    }

    #[test]
    fn overlapping_filters() {
        for (a, b, expected) in [
            ("#", "a", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "+/broker", false),
            ("$SYS/#", "$SYS/+", true),
            ("a/+", "+/b", true),
            ("a/b", "a/c", false),
            ("a/#", "a", true),
            ("a/b/c", "a/b", false),
            ("secret/#", "#", true),
            ("+", "+", true),
        ] {
            assert_eq!(overlaps(&f(a), &f(b)), expected, "{a} overlaps {b}");
            assert_eq!(overlaps(&f(b), &f(a)), expected, "{b} overlaps {a}");
        }
    }

    const FILE: &str = "
# anonymous
topic read public/#
topic public/chat

user alice
topic readwrite alice/#
topic read $SYS/#
topic deny alice/private/#

client sensor-17
topic write sensors/17/#

pattern readwrite users/%u/#
pattern write clients/%c/status
pattern deny secret/#
";

    #[test]
    fn sections_and_patterns() {
        let acl = AclFile::parse(FILE).unwrap();
        let anonymous = acl.for_client(None, "anon");
        assert!(anonymous.can_subscribe(&f("public/+")));
        assert!(!anonymous.can_publish(&t("public/news")));
        assert!(
            anonymous.can_publish(&t("public/chat")),
            "readwrite by default"
        );
        assert!(anonymous.can_publish(&t("clients/anon/status")), "%c");
        assert!(!anonymous.can_subscribe(&f("users/#")), "%u needs a user");
        assert!(!anonymous.can_subscribe(&f("alice/#")));

        let alice = acl.for_client(Some("alice"), "laptop");
        assert!(alice.can_publish(&t("alice/notes")));
        assert!(!alice.can_publish(&t("alice/private/x")), "deny wins");
        assert!(!alice.can_subscribe(&f("alice/#")), "overlaps the deny");
        assert!(alice.can_subscribe(&f("alice/public/#")));
        assert!(alice.can_subscribe(&f("$SYS/broker/#")));
        assert!(alice.can_subscribe(&f("users/alice/inbox")));
        assert!(!alice.can_subscribe(&f("users/bob/inbox")));
        assert!(
            !alice.can_publish(&t("public/chat")),
            "not the anonymous rules"
        );
        assert!(!alice.can_subscribe(&f("#")));
        assert!(alice.can_read(&t("alice/x")));
        assert!(!alice.can_read(&t("alice/private/x")));

        let sensor = acl.for_client(Some("bob"), "sensor-17");
        assert!(sensor.can_publish(&t("sensors/17/temp")));
        assert!(!sensor.can_subscribe(&f("sensors/17/temp")), "write only");
        assert!(sensor.can_publish(&t("users/bob/x")));
        assert!(!sensor.can_publish(&t("secret/x")));

        // Names that would widen a pattern get nothing from it.
        let sneaky = acl.for_client(Some("alice/../bob"), "c");
        assert!(!sneaky.can_subscribe(&f("users/alice/../bob/#")));
        let wild = acl.for_client(Some("#"), "c");
        assert!(!wild.can_subscribe(&f("users/#")));
    }

    /// The README's example has comments at the end of lines: they are comments, not part of
    /// a user name or a filter.
    #[test]
    fn comments_at_the_end_of_lines() {
        let acl = AclFile::parse(
            "user alice   # the user name\ntopic read a/#\t# all of a\n\
             pattern readwrite users/%u/# # every client\n   # indented\n\
             user root\ntopic read #\ntopic write # # everything\ntopic deny #  # all\n\
             user other\ntopic b/+ # readwrite\nuser reader\ntopic read #\n",
        );
        let acl = acl.unwrap_or_else(|e| panic!("{e}"));
        let alice = acl.for_client(Some("alice"), "c");
        assert!(alice.can_subscribe(&f("a/#")));
        assert!(!alice.can_publish(&t("a/x")));
        assert!(alice.can_subscribe(&f("users/alice/#")));
        assert!(!alice.can_subscribe(&f("users/#")));
        // A filter that is `#` is the filter, not a comment.
        let root = acl.for_client(Some("root"), "c");
        assert!(!root.can_publish(&t("x/y")), "deny #");
        assert!(!root.can_subscribe(&f("#")));
        let reader = acl.for_client(Some("reader"), "c");
        assert!(reader.can_subscribe(&f("#")) && !reader.can_publish(&t("x")));
        let other = acl.for_client(Some("other"), "c");
        assert!(other.can_publish(&t("b/1")) && other.can_subscribe(&f("b/2")));
    }

    /// The example in the README's "Authentication and authorization" loads, and means what
    /// it says (before the fix, its end-of-line comments broke it).
    #[test]
    fn the_readme_example_loads() {
        let readme = include_str!("../README.md");
        let from = readme.find("**`acl_file`**").unwrap();
        let block = readme[from..].split("```text").nth(1).unwrap();
        let example = block.split("```").next().unwrap();
        let acl = AclFile::parse(example).unwrap_or_else(|e| panic!("{e}"));
        let alice = acl.for_client(Some("alice"), "phone");
        assert!(alice.can_publish(&t("alice/x")));
        assert!(alice.can_subscribe(&f("$SYS/#")));
        assert!(alice.can_publish(&t("users/alice/x")));
        assert!(!alice.can_subscribe(&f("secret/#")));
        let sensor = acl.for_client(None, "sensor-17");
        assert!(sensor.can_publish(&t("sensors/17/temp")));
        assert!(sensor.can_subscribe(&f("public/#")));
    }

    #[test]
    fn a_filter_with_a_space_needs_its_access_word() {
        let acl = AclFile::parse("topic read my topic/#\ntopic deny my topic/secret").unwrap();
        let anonymous = acl.for_client(None, "c");
        assert!(anonymous.can_read(&t("my topic/x")));
        assert!(!anonymous.can_read(&t("my topic/secret")));
        assert!(!anonymous.can_publish(&t("my topic/x")));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, what) in [
            ("topic read", 1, "no topic filter"),
            ("\nuser\n", 2, "needs a name"),
            ("topic read a/#/b", 1, "not a topic filter"),
            ("topic read a/%u", 1, "pattern"),
            ("allow everything", 1, "unknown word"),
            (
                "user a\ntopic dney secret/#",
                2,
                "\"dney\" is not an access",
            ),
            (
                "pattern raed users/%u/#",
                1,
                "give read, write, readwrite or deny",
            ),
        ] {
            let e = AclFile::parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}:")), "{text}: {e}");
            assert!(e.contains(what), "{text}: {e}");
        }
    }
}
