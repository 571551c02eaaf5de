//! An exporter that writes spans as OTLP JSON, one `ExportTraceServiceRequest` per line
//! (the OTLP/JSON encoding: lowerCamelCase fields, hex trace and span ids, 64-bit integers
//! as strings), to a file or stdout, for piping and offline inspection.

use std::{
    fmt,
    io::Write,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};

/// Writes each exported batch as one JSON line.
pub struct JsonLinesExporter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    resource: ResourceAttributesWithSchema,
}

impl fmt::Debug for JsonLinesExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonLinesExporter")
    }
}

impl JsonLinesExporter {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            resource: ResourceAttributesWithSchema::default(),
        }
    }

    fn write(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        let line = serde_json::to_vec(&request)
            .map_err(|error| OTelSdkError::InternalFailure(error.to_string()))?;
        let mut out = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("JSON output lock poisoned".into()))?;
        out.write_all(&line)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|error| {
                OTelSdkError::InternalFailure(format!("cannot write JSON lines: {error}"))
            })
    }
}

impl SpanExporter for JsonLinesExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.write(batch))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::RandomIdGenerator;

    use super::*;
    use crate::{session::tests::client_session, span};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_otlp_json_request_per_batch() {
        let out = Shared::default();
        let mut exporter = JsonLinesExporter::new(Box::new(out.clone()));
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name("otel-agent")
                .build(),
        );
        let span = span::span_data(
            &client_session(),
            &RandomIdGenerator::default(),
            &span::scope(),
        );
        exporter.write(vec![span]).unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1);
        let json: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let resource_spans = &json["resourceSpans"][0];
        assert_eq!(
            resource_spans["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "otel-agent"}})
        );
        let span = &resource_spans["scopeSpans"][0]["spans"][0];
        assert_eq!(span["name"], "tcp connect :8080");
        assert_eq!(span["kind"], 3, "SPAN_KIND_CLIENT");
        assert_eq!(span["startTimeUnixNano"], "1000000000010000000");
        assert_eq!(span["endTimeUnixNano"], "1000000000011500000");
        assert_eq!(span["traceId"].as_str().unwrap().len(), 32, "hex trace id");
        assert_eq!(span["parentSpanId"], "");
    }
}
