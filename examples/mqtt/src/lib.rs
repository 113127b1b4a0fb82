//! hermes-mqtt: an MQTT 3.1.1 broker built on Hermes receivers.
