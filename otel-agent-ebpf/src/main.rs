//! The probe. Its main program on `sock:inet_sock_set_state` follows tcplife's rules: it
//! records a TCP socket's birth (first state below `TCP_FIN_WAIT1`), remembers every state
//! the socket enters and the process that owns it, and at `TCP_CLOSE` writes one
//! [`SessionRecord`](common::SessionRecord) into the ring buffer and forgets the socket, on
//! every path.
//!
//! Small programs add what tcplife lacks: `tcp:tcp_receive_reset` marks resets from the
//! peer (it fires before the socket reaches `TCP_CLOSE`; `tcp:tcp_send_reset` fires after,
//! so resets this side sends are inferred in userspace from the states), and
//! `syscalls:sys_exit_accept{,4}` record the process that accepted a connection (the owner
//! of a server-side session), found through the new file descriptor.
//!
//! The state-change program comes in two attach types, chosen at load time: the classic
//! tracepoint (reads the event record; needs tracefs) and a raw tracepoint
//! (`inet_sock_set_state_raw`: gets the tracepoint's arguments and reads family, ports and
//! addresses from the socket, at offsets from BTF). A classic tracepoint program is skipped
//! while any BPF tracing program runs on the CPU (the global `bpf_prog_active`); a raw
//! tracepoint only while the same program runs (its own `prog->active`).
//!
//! Filters set at load time reject sessions as soon as the fact they test is known, before
//! any map insert where it is known at birth. Every outcome is counted per CPU in `COUNTERS`.
//!
//! The modules, by job:
//! - [`programs`]: the entry points, one per attached program, thin;
//! - [`state_change`]: one `inet_sock_set_state` hit, read from the tracepoint record or
//!   from the socket;
//! - [`session`]: the socket-state machine (birth, state changes, the owner cached in its
//!   system calls, accept included; resets marked);
//! - [`record`]: the close: the filters that act only then, the session record written
//!   into the ring buffer, and its wakeup policy;
//! - [`kernel`]: reads of kernel memory at the offsets the agent resolved from BTF;
//! - [`task`]: the current task and the clock;
//! - [`filters`]: the load-time filters;
//! - [`counters`]: the per-CPU outcome counters;
//! - [`generation`]: which generation handles a hit when the probe is pinned.
//!
//! Splitting a function changes what the compiler makes of it (the filters at close and the
//! record written were split once, and the program grew by 4 instructions), so a change to
//! the modules is checked against the object's disassembly, function by function.
#![no_std]
#![no_main]

/// Reads one field of a global set at load time. Volatile, or the compiler would fold in the
/// value compiled in; one field, because a volatile read of a whole struct copies all of it
/// on every use.
///
/// The loader rewrites the globals (`.rodata`) before the program is loaded, so they are read
/// only through `global!`. Frozen read-only data is known to the verifier, which removes the
/// branches that the load-time settings make dead (an unset filter costs nothing).
macro_rules! global {
    ($($place:tt)+) => {
        // SAFETY: a field of an initialised static, read in place.
        unsafe { core::ptr::read_volatile(&raw const $($place)+) }
    };
}

mod counters;
mod filters;
mod generation;
mod kernel;
mod programs;
mod record;
mod session;
mod state_change;
mod task;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
