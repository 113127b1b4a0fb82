//! Serde for the protocol types that persisted state holds: [`QoS`] as its number, and
//! [`MqttString`], [`TopicName`] and [`TopicFilter`] as strings. Deserializing checks them
//! again, so stored data that is not a valid topic fails to load instead of entering the broker.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::packet::QoS;
use crate::string::MqttString;
use crate::topic::{TopicFilter, TopicName};

impl Serialize for QoS {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for QoS {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(deserializer)?;
        QoS::from_u8(n).ok_or_else(|| D::Error::custom(format_args!("QoS {n} is not 0, 1 or 2")))
    }
}

macro_rules! serde_as_string {
    ($($ty:ident),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $ty::try_from(String::deserialize(deserializer)?).map_err(D::Error::custom)
            }
        }
    )*};
}

serde_as_string!(MqttString, TopicName, TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> T {
        let bytes = postcard::to_stdvec(value).unwrap();
        postcard::from_bytes(&bytes).unwrap()
    }

    #[test]
    fn protocol_types_round_trip() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(round_trip(&qos), qos);
        }
        let name = TopicName::from_static("$SYS/broker/uptime");
        assert_eq!(round_trip(&name), name);
        let filter = TopicFilter::from_static("sport/+/#");
        assert_eq!(round_trip(&filter), filter);
        let s = MqttString::from_static("température");
        assert_eq!(round_trip(&s), s);
    }

    #[test]
    fn invalid_stored_values_fail_to_load() {
        let bytes = postcard::to_stdvec(&3u8).unwrap();
        assert!(postcard::from_bytes::<QoS>(&bytes).is_err());
        let bytes = postcard::to_stdvec("a/+").unwrap();
        assert!(postcard::from_bytes::<TopicName>(&bytes).is_err());
        let bytes = postcard::to_stdvec("a#").unwrap();
        assert!(postcard::from_bytes::<TopicFilter>(&bytes).is_err());
    }
}
