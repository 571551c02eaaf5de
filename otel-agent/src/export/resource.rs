//! The resource every span is exported under: the host (`host.name`, `os.type`,
//! `os.version`), the agent (`telemetry.distro.*`, and `service.name` = `otel-agent` with
//! `service.version` unless the user names the service), and whatever
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` say, which win.
//!
//! `OTEL_RESOURCE_ATTRIBUTES` is parsed here rather than by the SDK (which neither
//! percent-decodes nor validates it): W3C Baggage-like `key1=value1,key2=value2`, each key
//! a token, each value percent-decoded into UTF-8 (specification: Resource SDK, "Specifying
//! resource information via an environment variable"). The specification asks to discard
//! an invalid value and report an error; the agent refuses to start instead
//! ([`check_environment`]), so that no attribute is silently missing.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::attribute::{
    SERVICE_NAME as SERVICE_NAME_KEY, SERVICE_VERSION, TELEMETRY_DISTRO_NAME,
    TELEMETRY_DISTRO_VERSION,
};

use super::{
    span::key::{CONTAINER_ID, PROCESS_EXECUTABLE_NAME, PROCESS_PID},
    workload::WorkloadKey,
};

use super::config::{ConfigError, percent_decode};

const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// The service name spans carry unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// say otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "otel-agent";
/// The agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Checks `OTEL_RESOURCE_ATTRIBUTES` at start-up: an invalid value stops the agent.
pub fn check_environment() -> Result<(), ConfigError> {
    parse_attributes(std::env::var(RESOURCE_ATTRIBUTES).ok().as_deref()).map(drop)
}

/// Parses an `OTEL_RESOURCE_ATTRIBUTES` value (unset or empty: no attributes).
pub fn parse_attributes(value: Option<&str>) -> Result<Vec<KeyValue>, ConfigError> {
    let Some(value) = value.filter(|value| !value.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let invalid = |expected: &str| ConfigError {
        source_name: RESOURCE_ATTRIBUTES.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    };
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, text) = pair
                .split_once('=')
                .ok_or_else(|| invalid(&format!("comma-separated key=value pairs; `{}` has no `=`", pair.trim())))?;
            let key = key.trim();
            if key.is_empty() || !key.bytes().all(is_token_byte) {
                return Err(invalid(&format!(
                    "keys of letters, digits and !#$%&'*+-.^_`|~ (a W3C Baggage token); `{key}` is not"
                )));
            }
            let text = percent_decode(text.trim()).ok_or_else(|| {
                invalid(&format!(
                    "values percent-encoded into UTF-8 (`%20` for a space, `%2C` for a comma); the value of `{key}` is not"
                ))
            })?;
            Ok(KeyValue::new(key.to_owned(), text))
        })
        .collect()
}

/// A byte of an RFC 7230 token, what W3C Baggage allows in a key.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Builds the agent's resource.
pub fn agent_resource() -> Resource {
    // `os.*` and `host.name` are not stable in the semantic conventions yet ("development").
    let mut host = vec![
        KeyValue::new("os.type", "linux"),
        KeyValue::new(TELEMETRY_DISTRO_NAME, DEFAULT_SERVICE_NAME),
        KeyValue::new(TELEMETRY_DISTRO_VERSION, VERSION),
    ];
    if let Some(name) = hostname() {
        host.push(KeyValue::new("host.name", name));
    }
    if let Some(release) = kernel_release() {
        host.push(KeyValue::new("os.version", release));
    }
    // Checked at start-up (`check_environment`).
    let user =
        parse_attributes(std::env::var(RESOURCE_ATTRIBUTES).ok().as_deref()).unwrap_or_default();
    let service_name = std::env::var(SERVICE_NAME)
        .ok()
        .filter(|name| !name.trim().is_empty());
    build(host, user, service_name)
}

/// The resource from the host's attributes, the user's (`OTEL_RESOURCE_ATTRIBUTES`, which
/// win) and `OTEL_SERVICE_NAME` (which wins over both); without a service name from the
/// user, the agent is the service.
fn build(host: Vec<KeyValue>, user: Vec<KeyValue>, service_name: Option<String>) -> Resource {
    let named = names_service(service_name.as_deref(), &user);
    let mut builder = Resource::builder_empty()
        .with_detectors(&[Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        )])
        .with_attributes(host);
    if !named {
        builder = builder
            .with_service_name(DEFAULT_SERVICE_NAME)
            .with_attribute(KeyValue::new(SERVICE_VERSION, VERSION));
    }
    builder = builder.with_attributes(user);
    if let Some(name) = service_name {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// Whether the user names the service (`OTEL_SERVICE_NAME`, or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`): then every session shares the one resource.
pub fn user_names_service() -> bool {
    let attributes =
        parse_attributes(std::env::var(RESOURCE_ATTRIBUTES).ok().as_deref()).unwrap_or_default();
    names_service(std::env::var(SERVICE_NAME).ok().as_deref(), &attributes)
}

fn names_service(service_name: Option<&str>, attributes: &[KeyValue]) -> bool {
    service_name.is_some_and(|name| !name.trim().is_empty())
        || attributes
            .iter()
            .any(|kv| kv.key.as_str() == SERVICE_NAME_KEY)
}

/// The resource of one workload (or process): the agent's resource with the workload as
/// the service (`service.name` = its executable, or its comm when the probe could not read
/// the executable), its `process.executable.name`, `container.id` and, per process,
/// `process.pid`.
pub fn workload_resource(base: &Resource, key: &WorkloadKey) -> Resource {
    let mut attributes: Vec<KeyValue> = base
        .iter()
        .filter(|(key, _)| key.as_str() != SERVICE_VERSION && key.as_str() != SERVICE_NAME_KEY)
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
        .collect();
    attributes.push(KeyValue::new(SERVICE_NAME_KEY, key.name.to_string()));
    if key.executable {
        attributes.push(KeyValue::new(PROCESS_EXECUTABLE_NAME, key.name.to_string()));
    }
    if let Some(container) = &key.container {
        attributes.push(KeyValue::new(CONTAINER_ID, container.to_string()));
    }
    if let Some(pid) = key.pid {
        attributes.push(KeyValue::new(PROCESS_PID, i64::from(pid)));
    }
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
    use opentelemetry::Key;

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

    fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
        attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
            .collect()
    }

    #[test]
    fn resource_attributes_are_percent_decoded_and_validated() {
        let parsed = parse_attributes(Some(
            " service.name = web%20shop ,k8s.pod.name=a%2Cb,, empty=, deployment.environment.name=prod ",
        ))
        .unwrap();
        assert_eq!(
            text(&parsed),
            [
                ("service.name", "web shop"),
                ("k8s.pod.name", "a,b"),
                ("empty", ""),
                ("deployment.environment.name", "prod"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(parse_attributes(None).unwrap(), vec![]);
        assert_eq!(parse_attributes(Some("  ")).unwrap(), vec![]);
        let error = |value: &str| parse_attributes(Some(value)).unwrap_err().to_string();
        assert_eq!(
            error("=x,a=b"),
            "OTEL_RESOURCE_ATTRIBUTES=`=x,a=b` is invalid: keys of letters, digits and !#$%&'*+-.^_`|~ (a W3C Baggage token); `` is not"
        );
        assert_eq!(
            error("a b=c"),
            "OTEL_RESOURCE_ATTRIBUTES=`a b=c` is invalid: keys of letters, digits and !#$%&'*+-.^_`|~ (a W3C Baggage token); `a b` is not"
        );
        assert_eq!(
            error("a=b,novalue"),
            "OTEL_RESOURCE_ATTRIBUTES=`a=b,novalue` is invalid: comma-separated key=value pairs; `novalue` has no `=`"
        );
        assert_eq!(
            error("a=%ZZ"),
            "OTEL_RESOURCE_ATTRIBUTES=`a=%ZZ` is invalid: values percent-encoded into UTF-8 (`%20` for a space, `%2C` for a comma); the value of `a` is not"
        );
        assert!(error("a=%FF").contains("the value of `a` is not"));
    }

    #[test]
    fn the_service_name_comes_from_the_variable_then_the_attributes_then_the_agent() {
        let host = vec![KeyValue::new("host.name", "node-1")];
        let user = vec![
            KeyValue::new("service.name", "shop"),
            KeyValue::new("host.name", "override"),
        ];
        let named = build(host.clone(), user.clone(), None);
        assert_eq!(value(&named, "service.name").as_deref(), Some("shop"));
        assert_eq!(value(&named, "host.name").as_deref(), Some("override"));
        assert_eq!(value(&named, "service.version"), None);
        let both = build(host.clone(), user, Some("checkout".into()));
        assert_eq!(value(&both, "service.name").as_deref(), Some("checkout"));
        let agent = build(host, vec![KeyValue::new("team", "net")], None);
        assert_eq!(value(&agent, "service.name").as_deref(), Some("otel-agent"));
        assert_eq!(value(&agent, "service.version").as_deref(), Some(VERSION));
        assert_eq!(value(&agent, "team").as_deref(), Some("net"));
        assert_eq!(
            value(&agent, "telemetry.sdk.language").as_deref(),
            Some("rust")
        );
    }

    #[test]
    fn a_workload_resource_makes_the_workload_the_service() {
        let base = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "otel-agent"),
                KeyValue::new("service.version", "1.0"),
                KeyValue::new("host.name", "node-1"),
            ])
            .build();
        let key = WorkloadKey {
            container: Some("c0ffee".into()),
            name: "nginx".into(),
            executable: true,
            pid: None,
        };
        let resource = workload_resource(&base, &key);
        assert_eq!(value(&resource, "service.name").as_deref(), Some("nginx"));
        assert_eq!(
            value(&resource, "process.executable.name").as_deref(),
            Some("nginx")
        );
        assert_eq!(value(&resource, "container.id").as_deref(), Some("c0ffee"));
        assert_eq!(value(&resource, "host.name").as_deref(), Some("node-1"));
        assert_eq!(
            value(&resource, "service.version"),
            None,
            "the agent's version is not nginx's"
        );
        assert_eq!(resource.get(&Key::from_static_str("process.pid")), None);
        let process = workload_resource(
            &base,
            &WorkloadKey {
                container: None,
                pid: Some(4242),
                ..key
            },
        );
        assert_eq!(
            process.get(&Key::from_static_str("process.pid")),
            Some(opentelemetry::Value::I64(4242))
        );
        assert_eq!(value(&process, "container.id"), None);
    }

    #[test]
    fn the_user_names_the_service_with_either_variable() {
        assert!(names_service(Some("shop"), &[]));
        assert!(!names_service(Some("  "), &[]));
        assert!(names_service(
            None,
            &[KeyValue::new("service.name", "shop")]
        ));
        assert!(!names_service(None, &[KeyValue::new("team", "net")]));
    }
}
