//! The filters set at load time (the global `FILTERS`): each test passes everything while
//! its filter is unset, and the verifier removes it then (frozen read-only data).

use common::{AF_INET, AF_INET6, Filters, MAX_FILTER_PORTS};

use crate::{kernel::netns_of, record::ipv6_bytes, state_change::Ends};

#[unsafe(no_mangle)]
static FILTERS: Filters = Filters {
    pid: 0,
    exclude_pid: 0,
    netns: 0,
    family: 0,
    local_port_count: 0,
    remote_port_count: 0,
    _padding: 0,
    local_ports: [0; MAX_FILTER_PORTS],
    remote_ports: [0; MAX_FILTER_PORTS],
};

/// Whether the session's family (an IPv4-mapped IPv6 address counting as IPv4) passes.
pub(crate) fn family_allowed(args: &Ends) -> bool {
    let wanted = global!(FILTERS.family);
    if wanted == 0 {
        return true;
    }
    let effective = if args.family == AF_INET6 && is_ipv4_mapped(args.saddr_v6) {
        AF_INET
    } else {
        args.family
    };
    effective == wanted
}

/// `::ffff:a.b.c.d`: ten zero bytes, then two 0xff bytes.
fn is_ipv4_mapped(words: [u64; 2]) -> bool {
    let bytes = ipv6_bytes(words);
    bytes[..10].iter().all(|&b| b == 0) && bytes[10] == 0xff && bytes[11] == 0xff
}

/// Whether the local (`local`) or remote port passes its port list.
#[inline(always)]
pub(crate) fn port_allowed(port: u16, local: bool) -> bool {
    let count = if local {
        global!(FILTERS.local_port_count)
    } else {
        global!(FILTERS.remote_port_count)
    };
    if count == 0 {
        return true;
    }
    let ports = if local {
        global!(FILTERS.local_ports)
    } else {
        global!(FILTERS.remote_ports)
    };
    let mut index = 0;
    while index < MAX_FILTER_PORTS {
        if index < usize::from(count) && ports[index] == port {
            return true;
        }
        index += 1;
    }
    false
}

/// Whether the owner's process id passes the pid filter and is not the excluded one.
pub(crate) fn pid_allowed(pid: u32) -> bool {
    let wanted = global!(FILTERS.pid);
    (wanted == 0 || wanted == pid) && global!(FILTERS.exclude_pid) != pid
}

/// Whether the socket's network namespace passes.
pub(crate) fn netns_allowed(skaddr: u64) -> bool {
    let wanted = global!(FILTERS.netns);
    wanted == 0 || netns_of(skaddr) == Some(wanted)
}
