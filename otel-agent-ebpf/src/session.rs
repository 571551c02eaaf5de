//! The socket-state machine, after tcplife: a TCP socket is tracked in `SOCKETS` from its
//! birth (first state below `TCP_FIN_WAIT1`), every state it enters is remembered, its
//! owner cached in the owner's own system calls (connect, accept, close, shutdown), and at
//! `TCP_CLOSE` the entry is removed and the session handed to
//! [`on_close`](crate::record::on_close), on every path. Filters act at birth as soon as
//! the fact they test is known.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_current_task, macros::map, maps::LruHashMap,
    programs::TracePointContext,
};
use common::{
    SocketState as Socket, counter, offsets_valid, origin, states, tcp_state, tracepoint::SysExit,
};

use crate::{
    counters::count,
    filters::{family_allowed, netns_allowed, pid_allowed, port_allowed},
    generation,
    kernel::{KERNEL_OFFSETS, read},
    record::on_close,
    state_change::{Ends, StateChange},
    task::{current_comm, current_pid, now_ns, zero_comm},
};

#[map]
static SOCKETS: LruHashMap<u64, Socket> = LruHashMap::with_max_entries(1 << 16, 0);

/// Highest file descriptor the accept programs look up (bounds the fd table read).
const MAX_FD: i64 = 1 << 20;

/// Follows one state change of a socket: a birth, a change of a tracked socket, a close.
pub(crate) fn on_state_change(change: &impl StateChange) {
    let skaddr = change.skaddr();
    let oldstate = change.oldstate();
    let newstate = change.newstate();
    if !generation::handles(newstate == tcp_state::CLOSE, skaddr) {
        return;
    }
    let Some(socket) = SOCKETS.get_ptr_mut(skaddr) else {
        if newstate < tcp_state::FIN_WAIT1 {
            if change.is_tcp() {
                on_birth(skaddr, newstate, &change.ends());
            }
        } else if newstate == tcp_state::CLOSE
            && oldstate != tcp_state::LISTEN
            && oldstate != tcp_state::CLOSE
            && change.is_tcp()
        {
            // A listener closing, or a socket closed before it ever left CLOSE, is not a
            // session; anything else opened before the probe (or was evicted).
            on_close(skaddr, oldstate, &change.ends(), None, change.slot());
        }
        return;
    };
    // Only TCP sockets are tracked (their birth was checked), so a change of a tracked
    // socket needs no check until its close.
    // SAFETY: a live map value; the socket lock serialises changes to one socket.
    let socket = unsafe { &mut *socket };
    socket.states |= states::bit(newstate);
    match newstate {
        tcp_state::ESTABLISHED if socket.established_ns == 0 => socket.established_ns = now_ns(),
        // These changes run in the system call (connect, close, shutdown) of the process
        // that owns the socket, so the current task is the owner.
        tcp_state::SYN_SENT | tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK => {
            socket.pid = current_pid();
            socket.comm = current_comm();
            socket.owner_known = 1;
        }
        tcp_state::CLOSE => {
            // Copied out first: the removed entry may be reused at once by another CPU.
            let copy = *socket;
            let _ = SOCKETS.remove(skaddr);
            count(counter::RELEASED);
            // Checked again: a close missed by the probe may leave an entry that another
            // protocol's socket at the same address later meets.
            if change.is_tcp() {
                on_close(skaddr, oldstate, &change.ends(), Some(&copy), change.slot());
            }
        }
        _ => {}
    }
}

/// Tracks a socket born in `newstate`, unless a filter that can act at birth rejects it.
fn on_birth(skaddr: u64, newstate: i32, args: &Ends) {
    // Only connect() runs SYN_SENT in the owner's context: the pid filter can act now.
    let owner_known = newstate == tcp_state::SYN_SENT;
    let pid = if owner_known { current_pid() } else { 0 };
    // The local port of a connecting socket is not bound yet (sport is 0): checked later.
    let rejected = !family_allowed(args)
        || !port_allowed(args.dport, false)
        || (args.sport != 0 && !port_allowed(args.sport, true))
        || (owner_known && !pid_allowed(pid))
        || !netns_allowed(skaddr);
    if rejected {
        count(counter::FILTERED_AT_BIRTH);
        return;
    }
    let socket = Socket {
        birth_ns: now_ns(),
        established_ns: 0,
        states: states::bit(newstate),
        pid,
        comm: if owner_known {
            current_comm()
        } else {
            zero_comm()
        },
        origin: match newstate {
            tcp_state::SYN_SENT => origin::ACTIVE,
            tcp_state::SYN_RECV => origin::PASSIVE,
            _ => origin::UNKNOWN,
        },
        owner_known: u8::from(owner_known),
        _padding: 0,
        _padding_tail: 0,
    };
    if SOCKETS.insert(skaddr, socket, 0).is_ok() {
        count(counter::TRACKED);
    } else {
        count(counter::MAP_UPDATE_FAILED);
    }
}

/// Sets `bits` in the state of a tracked socket.
pub(crate) fn mark(skaddr: u64, bits: u32) {
    if !generation::active() {
        return;
    }
    if let Some(socket) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: a live map value.
        unsafe { (*socket).states |= bits };
    }
}

/// Runs as `accept()` returns, in the accepting process, which owns the new socket: finds
/// the socket through the returned descriptor (task -> files -> fdt -> fd[ret] -> file ->
/// socket -> sk) and caches the owner.
pub(crate) fn on_accept(ctx: &TracePointContext) {
    // SAFETY: a tracepoint program's context points at the event record described by the
    // format file, which `SysExit` mirrors; the verifier bounds every read.
    let args = unsafe { &*ctx.as_ptr().cast::<SysExit>() };
    let fd = args.ret;
    if !generation::active() {
        return;
    }
    if !(0..MAX_FD).contains(&fd) || global!(KERNEL_OFFSETS.valid) & offsets_valid::ACCEPT == 0 {
        return;
    }
    // SAFETY: the helper takes no arguments; the pointer is only read through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let Some(skaddr) = read::<u64>(task, global!(KERNEL_OFFSETS.task_files))
        .and_then(|files| read::<u64>(files, global!(KERNEL_OFFSETS.files_fdt)))
        .and_then(|fdt| read::<u64>(fdt, global!(KERNEL_OFFSETS.fdtable_fd)))
        .and_then(|fds| read::<u64>(fds, (fd as u32) * 8))
        .and_then(|file| read::<u64>(file, global!(KERNEL_OFFSETS.file_private_data)))
        .and_then(|socket| read::<u64>(socket, global!(KERNEL_OFFSETS.socket_sk)))
    else {
        return;
    };
    let Some(socket) = SOCKETS.get_ptr_mut(skaddr) else {
        return;
    };
    let pid = current_pid();
    if !pid_allowed(pid) {
        let _ = SOCKETS.remove(skaddr);
        count(counter::RELEASED);
        count(counter::FILTERED_AFTER_TRACKING);
        return;
    }
    // SAFETY: a live map value; the socket lock serialises changes to one socket.
    let socket = unsafe { &mut *socket };
    socket.pid = pid;
    socket.comm = current_comm();
    socket.owner_known = 1;
}
