//! `--resource-per-process`: each observed process (pid and comm) gets its own resource
//! ([`super::resource::process_resource`]), so that Jaeger and Tempo list each program as
//! its own service. A batch becomes one request with one `ResourceSpans` per process in
//! it; each process's resource is encoded once and kept for the next batches.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use opentelemetry_sdk::Resource;

use super::encode::EncodedResource;
use super::resource::process_resource;
use crate::session::Session;

/// Encoded resources kept at most; beyond, the cache starts over (a host that runs that
/// many distinct processes between two clears pays one encoding per process again).
const MAX_CACHED: usize = 4_096;

/// The agent's resource and, encoded, each process's resource built from it.
#[derive(Debug)]
pub struct ProcessResources {
    base: Resource,
    encoded: HashMap<(u32, String), EncodedResource>,
}

impl ProcessResources {
    pub fn new(base: Resource) -> Self {
        Self {
            base,
            encoded: HashMap::new(),
        }
    }

    /// Splits `sessions` by owning process, in (pid, comm) order, each group with its
    /// process's resource.
    pub fn groups<'s>(
        &mut self,
        sessions: &'s [Arc<Session>],
    ) -> Vec<(EncodedResource, Vec<&'s Session>)> {
        let mut groups: BTreeMap<(u32, &str), Vec<&Session>> = BTreeMap::new();
        for session in sessions {
            groups
                .entry((session.pid, session.comm.as_str()))
                .or_default()
                .push(session);
        }
        if self.encoded.len() + groups.len() > MAX_CACHED {
            self.encoded.clear();
        }
        groups
            .into_iter()
            .map(|((pid, comm), members)| {
                let resource = self
                    .encoded
                    .entry((pid, comm.to_owned()))
                    .or_insert_with(|| {
                        EncodedResource::new(&process_resource(&self.base, pid.into(), comm))
                    })
                    .clone();
                (resource, members)
            })
            .collect()
    }
}
