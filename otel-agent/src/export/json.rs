//! Writes spans as OTLP JSON, one `ExportTraceServiceRequest` per line (the OTLP/JSON
//! encoding: lowerCamelCase fields, hex trace and span ids, 64-bit integers as strings), to
//! a file or stdout, for piping and offline inspection. Each line is the request the
//! collector would receive, decoded from its protobuf bytes.

use std::{
    fmt,
    io::Write,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use super::{
    queue::Destination,
    transport::{Accepted, SendError},
};

/// Writes each request as one JSON line.
#[derive(Clone)]
pub struct JsonLines {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonLines")
    }
}

impl JsonLines {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }

    fn write(&self, request: &[u8]) -> Result<Accepted, SendError> {
        let failed = |what: String| SendError::Output(what);
        let request = ExportTraceServiceRequest::decode(request)
            .map_err(|error| failed(format!("cannot decode the request: {error}")))?;
        let line = serde_json::to_vec(&request).map_err(|error| failed(error.to_string()))?;
        let mut out = self
            .out
            .lock()
            .map_err(|_| failed("JSON output lock poisoned".into()))?;
        out.write_all(&line)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|error| failed(format!("cannot write JSON lines: {error}")))?;
        Ok(Accepted::default())
    }
}

impl Destination for JsonLines {
    fn send(&self, request: Bytes) -> impl Future<Output = Result<Accepted, SendError>> + Send {
        std::future::ready(self.write(&request))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::Resource;

    use super::*;
    use crate::{export::encode::RequestEncoder, session::tests::client_session};

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
        let lines = JsonLines::new(Box::new(out.clone()));
        let resource = Resource::builder_empty()
            .with_service_name("otel-agent")
            .build();
        let request = RequestEncoder::new(&resource, false).encode(&[client_session().into()]);
        lines.write(&request).unwrap();
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
