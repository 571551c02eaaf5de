//! Resolves, from the running kernel's BTF, the offsets of the kernel struct members the
//! probe reads at close, group by group: a group the BTF does not describe is left out (and
//! its attributes omitted), never guessed.

use std::path::Path;

use common::{KernelOffsets, offsets_valid};

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
const ACCEPT: Group = Group {
    bit: offsets_valid::ACCEPT,
    provides: "accepting process as owner (server sessions reset before close fall back to the task current at close)",
};

/// The offsets, and one message per group that could not be resolved.
pub struct Resolved {
    pub offsets: KernelOffsets,
    pub missing: Vec<String>,
}

/// Resolves every group from the BTF at `path` (normally `/sys/kernel/btf/vmlinux`).
pub fn resolve(path: &Path) -> Resolved {
    let btf = match Btf::from_file(path) {
        Ok(btf) => btf,
        Err(error) => {
            return Resolved {
                offsets: KernelOffsets::default(),
                missing: vec![format!(
                    "no byte counts, payload, RTT, retransmits, segment counts, network namespace or accepting process: {error}"
                )],
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
    Resolved { offsets, missing }
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

    #[test]
    fn a_missing_btf_file_leaves_every_group_out_with_one_message() {
        let resolved = resolve(Path::new("/nonexistent/vmlinux"));
        assert_eq!(resolved.offsets, KernelOffsets::default());
        assert_eq!(resolved.missing.len(), 1);
        assert!(
            resolved.missing[0].starts_with(
                "no byte counts, payload, RTT, retransmits, segment counts, network namespace or accepting process: cannot read BTF from /nonexistent/vmlinux"
            ),
            "{}",
            resolved.missing[0]
        );
    }
}
