//! Renders spans as OTLP JSON, one `ExportTraceServiceRequest` per line (the OTLP/JSON
//! encoding: lowerCamelCase fields, hex trace and span ids, 64-bit integers as strings), for
//! the JSON lines output (a file, a FIFO or stdout, written by its own thread:
//! [`crate::local`]). Each line is the request the collector would receive for the same
//! batch, decoded from its protobuf bytes.

use std::{io, sync::Arc};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use crate::{
    export::encode::RequestEncoder,
    local::{Lines, Render},
    session::Session,
};

/// Renders each batch of sessions as one JSON line.
pub struct JsonLines {
    encoder: RequestEncoder,
}

impl JsonLines {
    pub fn new(encoder: RequestEncoder) -> Self {
        Self { encoder }
    }
}

impl Render for JsonLines {
    fn render(&mut self, sessions: &[Arc<Session>], lines: &mut Lines) -> io::Result<()> {
        let body = self.encoder.encode(sessions);
        let request = ExportTraceServiceRequest::decode(&body[..]).map_err(|error| {
            io::Error::other(format!("cannot decode the encoded request: {error}"))
        })?;
        self.encoder.recycle(body);
        serde_json::to_writer(lines.buffer(), &request).map_err(io::Error::other)?;
        lines.end_line(sessions.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::Resource;

    use super::*;
    use crate::{export::workload::ResourceSettings, session::tests::client_session};

    #[test]
    fn writes_one_otlp_json_request_per_batch() {
        let resource = Resource::builder_empty()
            .with_service_name("otel-agent")
            .build();
        let mut json = JsonLines::new(RequestEncoder::new(&resource, ResourceSettings::SINGLE));
        let mut lines = Lines::default();
        let session = Arc::new(client_session());
        json.render(&[session.clone(), session], &mut lines)
            .unwrap();
        let text = String::from_utf8(lines.into_bytes()).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with('\n'));
        let json: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let resource_spans = &json["resourceSpans"][0];
        assert_eq!(
            resource_spans["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "otel-agent"}})
        );
        let spans = resource_spans["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2);
        let span = &spans[0];
        assert_eq!(span["name"], "tcp connect :8080");
        assert_eq!(span["kind"], 3, "SPAN_KIND_CLIENT");
        assert_eq!(span["startTimeUnixNano"], "1000000000010000000");
        assert_eq!(span["endTimeUnixNano"], "1000000000011500000");
        assert_eq!(span["traceId"].as_str().unwrap().len(), 32, "hex trace id");
        assert_eq!(span["parentSpanId"], "");
    }
}
