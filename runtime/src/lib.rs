//! Sluice: a connector runtime that moves messages from MQTT brokers through
//! WebAssembly transform plugins into Kafka, acknowledging MQTT only once
//! Kafka has each message.
//!
//! The modules follow the data: [`config`] reads pipeline YAML,
//! [`connectors`] hold the MQTT source and the Kafka sink, [`wasm`] runs the
//! transform plugins, [`engine`] ties them together with in-order acks and a
//! bounded in-flight window, [`metrics`] and [`http`] expose what happens.
#![deny(missing_docs)]

pub mod config;
pub mod connectors;
pub mod engine;
pub mod http;
pub mod message;
pub mod metrics;
pub mod runner;
pub mod scaffold;
pub mod summary;
pub mod template;
pub mod testing;
pub mod wasm;
