//! `--resource-per-process`: an exporter wrapper that regroups each batch by observed
//! process (`process.pid` and `tcplife.comm` span attributes) and exports every group under
//! that process's resource ([`crate::resource::process_resource`]), so that Jaeger and Tempo
//! list each program as its own service. A batch then costs one export request per process
//! in it.

use std::collections::BTreeMap;

use opentelemetry::Value;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};
use tokio::sync::Mutex;

use crate::{resource::process_resource, span::key};

/// Wraps `E`, exporting each process's spans under that process's resource.
#[derive(Debug)]
pub struct PerProcessExporter<E> {
    // The inner exporter's resource changes per group, so exports are serialised.
    inner: Mutex<E>,
    base: Resource,
}

impl<E> PerProcessExporter<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner: Mutex::new(inner),
            base: Resource::builder_empty().build(),
        }
    }
}

/// The process a span belongs to: (pid, comm).
fn process_of(span: &SpanData) -> (i64, String) {
    let mut pid = 0;
    let mut comm = String::new();
    for attribute in &span.attributes {
        match (attribute.key.as_str(), &attribute.value) {
            (key::PROCESS_PID, Value::I64(value)) => pid = *value,
            (key::COMM, value) => comm = value.as_str().into_owned(),
            _ => {}
        }
    }
    (pid, comm)
}

impl<E: SpanExporter> SpanExporter for PerProcessExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: BTreeMap<(i64, String), Vec<SpanData>> = BTreeMap::new();
        for span in batch {
            groups.entry(process_of(&span)).or_default().push(span);
        }
        let mut inner = self.inner.lock().await;
        let mut outcome = Ok(());
        for ((pid, comm), spans) in groups {
            inner.set_resource(&process_resource(&self.base, pid, &comm));
            if let Err(error) = inner.export(spans).await {
                outcome = Err(error);
            }
        }
        inner.set_resource(&self.base);
        outcome
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        match self.inner.try_lock() {
            Ok(inner) => inner.shutdown_with_timeout(timeout),
            Err(_) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                "an export was still running at shutdown".into(),
            )),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.base = resource.clone();
        self.inner.get_mut().set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, RandomIdGenerator};

    use super::*;
    use crate::{session::tests::client_session, span};

    /// Records the resource each export ran under.
    #[derive(Debug)]
    struct ResourceRecorder {
        current: Resource,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>,
        spans: InMemorySpanExporter,
    }

    impl SpanExporter for ResourceRecorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let name = self
                .current
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|v| v.as_str().into_owned())
                .unwrap_or_default();
            self.seen.lock().unwrap().push((name, batch.len()));
            self.spans.export(batch).await
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.current = resource.clone();
        }
    }

    #[test]
    fn each_process_is_exported_under_its_own_service() {
        let recorder = ResourceRecorder {
            current: Resource::builder_empty().build(),
            seen: std::sync::Arc::default(),
            spans: InMemorySpanExporter::default(),
        };
        let seen = recorder.seen.clone();
        let mut exporter = PerProcessExporter::new(recorder);
        exporter.set_resource(
            &Resource::builder_empty()
                .with_attributes([KeyValue::new("service.name", "otel-agent")])
                .build(),
        );
        let mut nginx = client_session();
        nginx.comm = "nginx".into();
        nginx.pid = 10;
        let mut curl = client_session();
        curl.comm = "curl".into();
        curl.pid = 20;
        let ids = RandomIdGenerator::default();
        let batch = [&nginx, &curl, &nginx]
            .map(|session| span::span_data(session, &ids, &span::scope()))
            .to_vec();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(exporter.export(batch))
            .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, vec![("curl".to_owned(), 1), ("nginx".to_owned(), 2)]);
    }
}
