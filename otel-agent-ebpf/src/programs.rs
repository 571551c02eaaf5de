//! The entry points, one per attached program: each reads its context and hands the hit to
//! [`session`](crate::session); none can fail (every failure inside is counted or leaves a
//! field zero), so each returns 0. The context records are laid out once, in
//! `common::tracepoint`, which the agent also checks against the kernel's format files.

use aya_ebpf::{
    EbpfContext as _,
    macros::{map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{RawTracePointContext, TracePointContext},
};
use common::{
    IPPROTO_TCP, counter, offsets_valid, states,
    tracepoint::{InetSockSetState, TcpReceiveReset},
};

use crate::{
    counters::count,
    kernel::{BACKUP_SLOT, KERNEL_OFFSETS, PRIMARY_SLOT},
    session::{mark, on_accept, on_state_change},
    state_change::RawStateChange,
};

/// 1 while the primary raw tracepoint program runs on this CPU, for the backup program.
#[map]
static PRIMARY_RUNNING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: a tracepoint program's context points at the event record described by the
    // format file, which `InetSockSetState` mirrors; the verifier bounds every read.
    let args = unsafe { &*ctx.as_ptr().cast::<InetSockSetState>() };
    if args.protocol == IPPROTO_TCP {
        on_state_change(args);
    }
    0
}

/// The same tracepoint, attached raw: its arguments are `TP_PROTO(const struct sock *sk,
/// const int oldstate, const int newstate)` (include/trace/events/sock.h).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> u32 {
    let Some(change) = raw_state_change(&ctx, PRIMARY_SLOT) else {
        return 0;
    };
    let Some(running) = PRIMARY_RUNNING.get_ptr_mut(0) else {
        on_state_change(&change);
        return 0;
    };
    // SAFETY: this CPU's flag; this program does not nest in itself, and the backup program
    // only reads it.
    unsafe { *running = 1 };
    on_state_change(&change);
    // SAFETY: as above.
    unsafe { *running = 0 };
    0
}

/// The raw tracepoint's arguments, `TP_PROTO(const struct sock *sk, const int oldstate,
/// const int newstate)`, for the program in `slot`; `None` without the `struct sock`
/// offsets (the agent then attaches the classic tracepoint instead).
#[inline(always)]
fn raw_state_change(ctx: &RawTracePointContext, slot: u32) -> Option<RawStateChange> {
    if global!(KERNEL_OFFSETS.valid) & offsets_valid::SOCK == 0 {
        return None;
    }
    Some(RawStateChange {
        sk: ctx.arg(0),
        oldstate: ctx.arg::<u64>(1) as i32,
        newstate: ctx.arg::<u64>(2) as i32,
        slot,
    })
}

/// The same raw tracepoint, attached after [`inet_sock_set_state_raw`], with its own
/// recursion guard: it handles the hits that arrive (in a softirq) while the primary runs
/// on this CPU, which the kernel skips for the primary, and ignores the rest (the primary
/// handled them). The kernel skips this program only while it runs itself, and then the
/// primary handles the hit. A hit skipped for the primary in the few instructions around
/// its flag (the kernel marks it running before it starts and after it ends) is handled by
/// neither, and counted: the primary's misses less the hits recovered here.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_backup(ctx: RawTracePointContext) -> u32 {
    let Some(change) = raw_state_change(&ctx, BACKUP_SLOT) else {
        return 0;
    };
    // Not nested inside the primary: it handled this hit.
    if PRIMARY_RUNNING.get(0).is_none_or(|running| *running == 0) {
        return 0;
    }
    count(counter::SKIPPED_RECOVERED);
    on_state_change(&change);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: as for `inet_sock_set_state`, for `TcpReceiveReset`.
    let args = unsafe { &*ctx.as_ptr().cast::<TcpReceiveReset>() };
    mark(args.skaddr, states::RESET_RECEIVED);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept(&ctx);
    0
}
