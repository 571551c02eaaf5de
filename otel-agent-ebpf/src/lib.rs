//! Exists so that `otel-agent` can name this crate as a build dependency, which makes cargo
//! rebuild the probe when its sources change; the probe itself is the `otel-agent` binary in
//! `main.rs`.
#![no_std]
