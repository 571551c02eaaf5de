//! Resolves, from the running kernel's BTF, the offsets of the kernel struct members the
//! probe reads at close, group by group: a group the BTF does not describe is left out (and
//! its attributes omitted), never guessed.

use std::path::Path;

use common::{KernelOffsets, SOCK_HEAD_BYTES, SOCK_INET_BYTES, TCP_WINDOW_MAX, offsets_valid};

use super::btf::{Btf, BtfError};

/// A group of members read together, with the attributes it feeds (for the warning).
struct Group {
    bit: u32,
    provides: &'static str,
}

const BYTES: Group = Group {
    bit: offsets_valid::BYTES,
    provides: "byte counts",
};
const SEQ: Group = Group {
    bit: offsets_valid::SEQ,
    provides: "payload byte counts",
};
const HEALTH: Group = Group {
    bit: offsets_valid::HEALTH,
    provides: "RTT, retransmits and segment counts",
};
const NETNS: Group = Group {
    bit: offsets_valid::NETNS,
    provides: "network namespace",
};
const EXE: Group = Group {
    bit: offsets_valid::EXE,
    provides: "owner's executable (process.executable.name; workloads fall back to the comm)",
};
const ACCEPT: Group = Group {
    bit: offsets_valid::ACCEPT,
    provides: "accepting process as owner (server sessions reset before close fall back to the task current at close)",
};

/// The offsets, and one message per group that could not be resolved.
pub struct Resolved {
    pub offsets: KernelOffsets,
    pub missing: Vec<String>,
    /// Why the `SOCK` group (needed by the raw tracepoint program only, so not an attribute
    /// missing) could not be resolved.
    pub sock_missing: Option<String>,
}

/// Resolves every group from the BTF at `path` (normally `/sys/kernel/btf/vmlinux`).
pub fn resolve(path: &Path) -> Resolved {
    let btf = match Btf::from_file(path) {
        Ok(btf) => btf,
        Err(error) => {
            return Resolved {
                offsets: KernelOffsets::default(),
                missing: vec![format!(
                    "no byte counts, payload, RTT, retransmits, segment counts, network namespace, accepting process or executable: {error}"
                )],
                sock_missing: Some(error.to_string()),
            };
        }
    };
    let mut offsets = KernelOffsets::default();
    let mut missing = Vec::new();
    let mut group =
        |group: Group,
         resolve: &mut dyn FnMut(&Btf, &mut KernelOffsets) -> Result<(), BtfError>| {
            match resolve(&btf, &mut offsets) {
                Ok(()) => offsets.valid |= group.bit,
                Err(error) => missing.push(format!("no {}: {error}", group.provides)),
            }
        };
    group(BYTES, &mut |btf, o| {
        o.bytes_acked = tcp_sock(btf, "bytes_acked", 8)?;
        o.bytes_received = tcp_sock(btf, "bytes_received", 8)?;
        Ok(())
    });
    group(SEQ, &mut |btf, o| {
        o.snd_una = tcp_sock(btf, "snd_una", 4)?;
        o.write_seq = tcp_sock(btf, "write_seq", 4)?;
        o.rcv_nxt = tcp_sock(btf, "rcv_nxt", 4)?;
        o.copied_seq = tcp_sock(btf, "copied_seq", 4)?;
        Ok(())
    });
    group(HEALTH, &mut |btf, o| {
        o.srtt_us = tcp_sock(btf, "srtt_us", 4)?;
        o.total_retrans = tcp_sock(btf, "total_retrans", 4)?;
        o.segs_in = tcp_sock(btf, "segs_in", 4)?;
        o.segs_out = tcp_sock(btf, "segs_out", 4)?;
        Ok(())
    });
    group(NETNS, &mut |btf, o| {
        o.sock_net = sized(btf, "sock", "__sk_common.skc_net.net", 8)?;
        o.net_inum = sized(btf, "net", "ns.inum", 4)?;
        Ok(())
    });
    group(ACCEPT, &mut |btf, o| {
        o.task_files = sized(btf, "task_struct", "files", 8)?;
        o.files_fdt = sized(btf, "files_struct", "fdt", 8)?;
        o.fdtable_fd = sized(btf, "fdtable", "fd", 8)?;
        o.file_private_data = sized(btf, "file", "private_data", 8)?;
        o.socket_sk = sized(btf, "socket", "sk", 8)?;
        Ok(())
    });
    group(EXE, &mut |btf, o| {
        o.task_mm = sized(btf, "task_struct", "mm", 8)?;
        o.mm_exe_file = sized(btf, "mm_struct", "exe_file", 8)?;
        o.file_dentry = sized(btf, "file", "f_path.dentry", 8)?;
        o.dentry_name = sized(btf, "dentry", "d_name.name", 8)?;
        Ok(())
    });
    let sock_missing = resolve_sock(&btf, &mut offsets).err();
    set_tcp_window(&mut offsets, &mut missing);
    Resolved {
        offsets,
        missing,
        sock_missing,
    }
}

/// The `SOCK` group: what the tracepoint records, read from the socket by the raw
/// tracepoint program.
fn resolve_sock(btf: &Btf, o: &mut KernelOffsets) -> Result<(), String> {
    let member =
        |structure, path, size| sized(btf, structure, path, size).map_err(|e| e.to_string());
    o.sk_protocol = member("sock", "sk_protocol", 2)?;
    o.skc_family = member("sock", "__sk_common.skc_family", 2)?;
    o.skc_dport = member("sock", "__sk_common.skc_dport", 2)?;
    o.skc_daddr = member("sock", "__sk_common.skc_daddr", 4)?;
    o.skc_v6_daddr = member("sock", "__sk_common.skc_v6_daddr", 16)?;
    o.skc_v6_rcv_saddr = member("sock", "__sk_common.skc_v6_rcv_saddr", 16)?;
    // `struct inet_sock` starts with its `struct sock`.
    o.inet_sport = member("inet_sock", "inet_sport", 2)?;
    o.inet_saddr = member("inet_sock", "inet_saddr", 4)?;
    let head = [
        (o.skc_family, 2),
        (o.skc_dport, 2),
        (o.skc_daddr, 4),
        (o.skc_v6_daddr, 16),
        (o.skc_v6_rcv_saddr, 16),
    ];
    if let Some((offset, _)) = head
        .iter()
        .find(|(offset, size)| (offset + size) as usize > SOCK_HEAD_BYTES)
    {
        return Err(format!(
            "a `struct sock_common` member at offset {offset} lies beyond the {SOCK_HEAD_BYTES} bytes the probe reads"
        ));
    }
    if o.inet_sport < o.inet_saddr + 4
        || (o.inet_sport + 2 - o.inet_saddr) as usize > SOCK_INET_BYTES
    {
        return Err(format!(
            "`inet_sock.inet_sport` (at {}) is not within {SOCK_INET_BYTES} bytes after `inet_saddr` (at {})",
            o.inet_sport, o.inet_saddr
        ));
    }
    o.valid |= offsets_valid::SOCK;
    Ok(())
}

/// Sets the `tcp_sock` window that the probe reads at once: the 8-byte aligned range holding
/// every member of the `tcp_sock` groups resolved. If a member is not naturally aligned, or
/// they spread over more than [`TCP_WINDOW_MAX`] bytes (neither happens on Linux), those
/// groups are left out.
fn set_tcp_window(offsets: &mut KernelOffsets, missing: &mut Vec<String>) {
    let o = *offsets;
    let groups = [
        (BYTES, vec![(o.bytes_acked, 8), (o.bytes_received, 8)]),
        (
            SEQ,
            vec![
                (o.snd_una, 4),
                (o.write_seq, 4),
                (o.rcv_nxt, 4),
                (o.copied_seq, 4),
            ],
        ),
        (
            HEALTH,
            vec![
                (o.srtt_us, 4),
                (o.total_retrans, 4),
                (o.segs_in, 4),
                (o.segs_out, 4),
            ],
        ),
    ];
    let resolved: Vec<_> = groups
        .into_iter()
        .filter(|(group, _)| o.valid & group.bit != 0)
        .collect();
    let members = || {
        resolved
            .iter()
            .flat_map(|(_, members)| members.iter().copied())
    };
    let (Some(first), Some(end)) = (
        members().map(|(offset, _)| offset).min(),
        members().map(|(offset, size)| offset + size).max(),
    ) else {
        return;
    };
    let start = first - first % 8;
    let aligned = members().all(|(offset, size)| offset % size == 0);
    if aligned && (end - start) as usize <= TCP_WINDOW_MAX {
        offsets.tcp_window = start;
        offsets.tcp_window_len = end - start;
        return;
    }
    for (group, _) in &resolved {
        offsets.valid &= !group.bit;
        missing.push(format!(
            "no {}: the tcp_sock members are misaligned or spread over more than {TCP_WINDOW_MAX} bytes",
            group.provides
        ));
    }
}

fn tcp_sock(btf: &Btf, member: &str, size: u32) -> Result<u32, BtfError> {
    sized(btf, "tcp_sock", member, size)
}

/// The offset of `path` in `structure`, refusing a member of an unexpected width.
fn sized(btf: &Btf, structure: &str, path: &str, size: u32) -> Result<u32, BtfError> {
    let member = btf.member(structure, path)?;
    if member.size != size {
        return Err(BtfError::UnexpectedSize {
            structure: structure.to_owned(),
            member: path.to_owned(),
            expected: size,
            found: member.size,
        });
    }
    Ok(member.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `tcp_sock` offsets of Linux 6.18 (x86_64), from its BTF.
    fn linux_6_18() -> KernelOffsets {
        KernelOffsets {
            valid: offsets_valid::BYTES | offsets_valid::SEQ | offsets_valid::HEALTH,
            bytes_acked: 1824,
            bytes_received: 1752,
            snd_una: 1672,
            write_seq: 1576,
            rcv_nxt: 1664,
            copied_seq: 1464,
            srtt_us: 1680,
            total_retrans: 2200,
            segs_in: 1760,
            segs_out: 1536,
            ..KernelOffsets::default()
        }
    }

    #[test]
    fn the_tcp_window_spans_the_resolved_members_from_an_aligned_start() {
        let mut offsets = linux_6_18();
        let mut missing = Vec::new();
        set_tcp_window(&mut offsets, &mut missing);
        assert_eq!(
            (offsets.tcp_window, offsets.tcp_window_len),
            (1464, 2204 - 1464)
        );
        assert!(missing.is_empty(), "{missing:?}");

        // Without HEALTH, total_retrans (the last member) is not read; copied_seq, at 1468
        // here, starts the window at the word before it.
        let mut offsets = KernelOffsets {
            valid: offsets_valid::BYTES | offsets_valid::SEQ,
            copied_seq: 1468,
            ..linux_6_18()
        };
        set_tcp_window(&mut offsets, &mut missing);
        assert_eq!(
            (offsets.tcp_window, offsets.tcp_window_len),
            (1464, 1832 - 1464)
        );
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn a_window_too_wide_or_misaligned_leaves_the_tcp_sock_groups_out() {
        for offsets in [
            KernelOffsets {
                total_retrans: 1464 + TCP_WINDOW_MAX as u32,
                ..linux_6_18()
            },
            KernelOffsets {
                segs_in: 1762,
                ..linux_6_18()
            },
        ] {
            let mut offsets = offsets;
            let mut missing = Vec::new();
            set_tcp_window(&mut offsets, &mut missing);
            assert_eq!(offsets.valid, 0);
            assert_eq!((offsets.tcp_window, offsets.tcp_window_len), (0, 0));
            assert_eq!(
                missing,
                [
                    "no byte counts: the tcp_sock members are misaligned or spread over more than 4096 bytes",
                    "no payload byte counts: the tcp_sock members are misaligned or spread over more than 4096 bytes",
                    "no RTT, retransmits and segment counts: the tcp_sock members are misaligned or spread over more than 4096 bytes",
                ]
            );
        }
    }

    /// The running kernel's BTF resolves the chain from the task to its executable's
    /// name; on Linux 6.18 (this machine) at the offsets a separate BTF walker read from
    /// `/sys/kernel/btf/vmlinux`.
    #[test]
    fn the_executable_chain_resolves_from_the_running_kernel() {
        let resolved = resolve(Path::new("/sys/kernel/btf/vmlinux"));
        let o = resolved.offsets;
        assert_ne!(o.valid & offsets_valid::EXE, 0, "{:?}", resolved.missing);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if release.starts_with("6.18") {
            assert_eq!(
                (o.task_mm, o.mm_exe_file, o.file_dentry, o.dentry_name),
                (1136, 1312, 72, 40)
            );
        }
    }

    #[test]
    fn a_missing_btf_file_leaves_every_group_out_with_one_message() {
        let resolved = resolve(Path::new("/nonexistent/vmlinux"));
        assert_eq!(resolved.offsets, KernelOffsets::default());
        assert_eq!(resolved.missing.len(), 1);
        assert!(
            resolved.missing[0].starts_with(
                "no byte counts, payload, RTT, retransmits, segment counts, network namespace, accepting process or executable: cannot read BTF from /nonexistent/vmlinux"
            ),
            "{}",
            resolved.missing[0]
        );
    }
}
