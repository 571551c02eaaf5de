//! The resource every span is exported under: the host (`host.name`, `os.type`,
//! `os.version`), the agent (`telemetry.distro.*`, and `service.name` = `otel-agent` with
//! `service.version` unless the user names the service), and whatever
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` say, which win.

use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;

/// The service name spans carry unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// say otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "otel-agent";
/// The agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the agent's resource.
pub fn agent_resource() -> Resource {
    let mut host = vec![
        KeyValue::new("os.type", "linux"),
        KeyValue::new("telemetry.distro.name", DEFAULT_SERVICE_NAME),
        KeyValue::new("telemetry.distro.version", VERSION),
    ];
    if let Some(name) = hostname() {
        host.push(KeyValue::new("host.name", name));
    }
    if let Some(release) = kernel_release() {
        host.push(KeyValue::new("os.version", release));
    }
    // Later sources win: the SDK's detectors read OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES after the host attributes.
    let resource = Resource::builder_empty()
        .with_attributes(host.clone())
        .with_detectors(&[
            Box::new(opentelemetry_sdk::resource::SdkProvidedResourceDetector),
            Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector),
            Box::new(opentelemetry_sdk::resource::EnvResourceDetector::new()),
        ])
        .build();
    let unnamed = resource
        .get(&Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    if !unnamed {
        return resource;
    }
    Resource::builder_empty()
        .with_attributes(host)
        .with_detectors(&[
            Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector),
            Box::new(opentelemetry_sdk::resource::EnvResourceDetector::new()),
        ])
        .with_service_name(DEFAULT_SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", VERSION))
        .build()
}

/// The resource of one observed process (`--resource-per-process`): the agent's resource
/// with that process as the service.
pub fn process_resource(base: &Resource, pid: i64, comm: &str) -> Resource {
    let mut attributes: Vec<KeyValue> = base
        .iter()
        .filter(|(key, _)| key.as_str() != "service.version")
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
        .collect();
    attributes.retain(|kv| kv.key.as_str() != "service.name");
    attributes.push(KeyValue::new("service.name", comm.to_owned()));
    attributes.push(KeyValue::new("process.pid", pid));
    Resource::builder_empty()
        .with_attributes(attributes)
        .build()
}

fn hostname() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable and its length is passed.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return None;
    }
    let len = buffer.iter().position(|&b| b == 0)?;
    String::from_utf8(buffer[..len].to_vec()).ok()
}

fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|release| release.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(resource: &Resource, key: &'static str) -> Option<String> {
        resource
            .get(&Key::from_static_str(key))
            .map(|value| value.as_str().into_owned())
    }

    #[test]
    fn the_agent_resource_names_the_host_the_kernel_and_the_agent() {
        // The test process has neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES set
        // (scripts/test.sh does not set them).
        let resource = agent_resource();
        assert_eq!(
            value(&resource, "service.name").as_deref(),
            Some("otel-agent")
        );
        assert_eq!(
            value(&resource, "service.version").as_deref(),
            Some(VERSION)
        );
        assert_eq!(value(&resource, "os.type").as_deref(), Some("linux"));
        assert_eq!(value(&resource, "os.version"), kernel_release());
        assert_eq!(value(&resource, "host.name"), hostname());
        assert_eq!(
            value(&resource, "telemetry.distro.name").as_deref(),
            Some("otel-agent")
        );
        assert_eq!(
            value(&resource, "telemetry.sdk.language").as_deref(),
            Some("rust")
        );
    }

    #[test]
    fn a_process_resource_makes_the_process_the_service() {
        let base = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "otel-agent"),
                KeyValue::new("service.version", "1.0"),
                KeyValue::new("host.name", "node-1"),
            ])
            .build();
        let resource = process_resource(&base, 4242, "nginx");
        assert_eq!(value(&resource, "service.name").as_deref(), Some("nginx"));
        assert_eq!(value(&resource, "host.name").as_deref(), Some("node-1"));
        assert_eq!(
            value(&resource, "service.version"),
            None,
            "the agent's version is not nginx's"
        );
        assert_eq!(
            resource.get(&Key::from_static_str("process.pid")),
            Some(opentelemetry::Value::I64(4242))
        );
    }
}
