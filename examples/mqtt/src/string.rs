//! MQTT's UTF-8 encoded strings [MQTT-1.5.3], held in [`Bytes`] so that decoding does not copy.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// The most bytes a string or binary field can hold: its length is a two-byte prefix [MQTT-1.5.3].
pub const MAX_STRING_LEN: usize = 65_535;

/// Why bytes are not an MQTT string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StringError {
    /// Over [`MAX_STRING_LEN`] bytes.
    #[error("string is {len} bytes long, over the 65535 its length prefix can hold [MQTT-1.5.3]")]
    TooLong {
        /// The string's length in bytes.
        len: usize,
    },
    /// Not well-formed UTF-8 (which includes encoded surrogates U+D800..U+DFFF).
    #[error("string is not well-formed UTF-8 [MQTT-1.5.3-1]")]
    InvalidUtf8,
    /// Contains U+0000.
    #[error("string contains the null character U+0000 [MQTT-1.5.3-2]")]
    NullCharacter,
}

/// A valid MQTT string: well-formed UTF-8 [MQTT-1.5.3-1], no U+0000 [MQTT-1.5.3-2], at most
/// [`MAX_STRING_LEN`] bytes.
///
/// It shares its bytes: a string decoded from a packet is a slice of the packet's buffer, and a
/// clone is a reference count. Control characters and non-characters are allowed (the
/// specification only says SHOULD NOT for them), and a leading U+FEFF is kept [MQTT-1.5.3-3].
///
/// ```
/// use hermes_mqtt::MqttString;
///
/// let s = MqttString::try_from("sensors/température").unwrap();
/// assert_eq!(s.as_str(), "sensors/température");
/// assert!(MqttString::try_from("nul\0").is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MqttString(Bytes);

impl MqttString {
    /// Checks `bytes` and wraps them without copying.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StringError> {
        check(&bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps a string literal without copying.
    ///
    /// # Panics
    ///
    /// If `s` contains U+0000 or is longer than [`MAX_STRING_LEN`] bytes: meant for literals,
    /// not for data from the wire.
    #[must_use]
    pub const fn from_static(s: &'static str) -> Self {
        assert!(s.len() <= MAX_STRING_LEN, "MQTT string over 65535 bytes");
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            assert!(bytes[i] != 0, "MQTT string with U+0000");
            i += 1;
        }
        Self(Bytes::from_static(bytes))
    }

    /// The string.
    ///
    /// Takes time linear in the length: without `unsafe` the UTF-8 checked on construction is
    /// checked again. Matching and comparing work on [`as_bytes`](Self::as_bytes) instead.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Never fails: construction checked the bytes, and they are immutable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The UTF-8 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The shared bytes, by value.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy in a buffer of its own, for keeping long: a decoded string is a slice of the
    /// packet's buffer and keeps all of that buffer alive.
    #[must_use]
    pub fn to_compact(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }
}

/// Checks the rules of [MQTT-1.5.3] on raw bytes.
pub(crate) fn check(bytes: &[u8]) -> Result<(), StringError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(StringError::TooLong { len: bytes.len() });
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(StringError::InvalidUtf8);
    }
    // In well-formed UTF-8 a zero byte is always U+0000.
    if bytes.contains(&0) {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

impl TryFrom<Bytes> for MqttString {
    type Error = StringError;
    fn try_from(bytes: Bytes) -> Result<Self, StringError> {
        Self::from_bytes(bytes)
    }
}

impl TryFrom<String> for MqttString {
    type Error = StringError;
    fn try_from(s: String) -> Result<Self, StringError> {
        Self::from_bytes(Bytes::from(s))
    }
}

impl TryFrom<&str> for MqttString {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, StringError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl FromStr for MqttString {
    type Err = StringError;
    fn from_str(s: &str) -> Result<Self, StringError> {
        Self::try_from(s)
    }
}

impl AsRef<[u8]> for MqttString {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_of_1_5_3() {
        assert_eq!(MqttString::try_from("").unwrap().len(), 0);
        // Non-characters and control characters are allowed; U+FEFF is kept [MQTT-1.5.3-3].
        for ok in ["\u{FFFF}", "\u{1}\u{7F}\u{9F}", "\u{FEFF}a", "\u{10FFFF}"] {
            assert_eq!(MqttString::try_from(ok).unwrap(), ok);
        }
        assert_eq!(
            MqttString::try_from("a\0b"),
            Err(StringError::NullCharacter)
        );
        // An encoded surrogate U+D800, an overlong U+0000, a lone continuation byte.
        for bad in [
            &b"\xED\xA0\x80"[..],
            b"\xC0\x80",
            b"\x80",
            b"\xF4\x90\x80\x80",
        ] {
            let got = MqttString::from_bytes(Bytes::from_static(bad));
            assert_eq!(got, Err(StringError::InvalidUtf8), "{bad:?}");
        }
        let long = "a".repeat(MAX_STRING_LEN + 1);
        assert_eq!(
            MqttString::try_from(long),
            Err(StringError::TooLong { len: 65_536 })
        );
        assert!(MqttString::try_from("a".repeat(MAX_STRING_LEN)).is_ok());
    }

    #[test]
    #[should_panic(expected = "U+0000")]
    fn from_static_refuses_nul() {
        let _ = MqttString::from_static("a\0");
    }
}
