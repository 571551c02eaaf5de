//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), enough to find the byte
//! offset and size of a member of a named struct, looking through anonymous nested structs
//! and unions. The format is the one in the kernel's `Documentation/bpf/btf.rst`
//! (`include/uapi/linux/btf.h`): a header, a type section and a string section.
//!
//! aya-obj parses BTF too but keeps struct members private, and the crates that expose them
//! are either LGPL or bind libbpf; the subset needed here is small.

use std::path::{Path, PathBuf};

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xEB9F;
const HEADER_LEN: usize = 24;
const TYPE_HEADER_LEN: usize = 12;
/// How deep a type chain (typedefs, qualifiers, arrays, nested anonymous members) may go:
/// kernel types nest a few levels; a malformed file may loop.
const MAX_DEPTH: u32 = 32;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why an offset could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct named `{0}`")]
    StructNotFound(String),
    #[error("BTF struct `{structure}` has no member `{member}`")]
    MemberNotFound { structure: String, member: String },
    #[error("BTF member `{structure}.{member}` is a bitfield or not byte aligned")]
    NotByteAligned { structure: String, member: String },
    #[error("BTF member `{structure}.{member}` is {found} bytes wide, expected {expected}")]
    UnexpectedSize {
        structure: String,
        member: String,
        expected: u32,
        found: u32,
    },
}

/// Where a struct member lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the struct.
    pub offset: u32,
    /// Size of the member's type in bytes.
    pub size: u32,
}

/// Parsed BTF: the raw type and string sections and where each type starts.
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Byte offset in `types` of type id `i + 1` (id 0 is `void`).
    starts: Vec<usize>,
}

impl Btf {
    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|error| BtfError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&data)
    }

    /// Parses a BTF blob in the host's byte order.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic or short header"));
        }
        let header_len = read_u32(data, 4)? as usize;
        let section = |offset_at: usize, len_at: usize| -> Result<Vec<u8>, BtfError> {
            let offset = read_u32(data, offset_at)? as usize;
            let len = read_u32(data, len_at)? as usize;
            header_len
                .checked_add(offset)
                .and_then(|start| data.get(start..start.checked_add(len)?))
                .map(<[u8]>::to_vec)
                .ok_or(BtfError::Malformed("section outside the file"))
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let starts = index_types(&types)?;
        Ok(Self {
            types,
            strings,
            starts,
        })
    }

    /// Offset and size of the member at `path` in `struct structure`. `path` is a member
    /// name, or names joined by dots to descend into nested structs (`__sk_common.skc_net`);
    /// anonymous nested structs and unions are searched at every step.
    pub fn member(&self, structure: &str, path: &str) -> Result<Member, BtfError> {
        let not_found = || BtfError::MemberNotFound {
            structure: structure.to_owned(),
            member: path.to_owned(),
        };
        let mut id = (1..=self.starts.len() as u32)
            .find(|&id| {
                self.header(id).is_ok_and(|header| {
                    header.kind == KIND_STRUCT && self.name(header.name_off) == Some(structure)
                })
            })
            .ok_or_else(|| BtfError::StructNotFound(structure.to_owned()))?;
        let mut bit_offset = 0;
        let mut type_id = id;
        for (step, name) in path.split('.').enumerate() {
            if step > 0 {
                id = self.composite(type_id, 0)?.ok_or_else(not_found)?;
            }
            let found = self.find_member(id, name, 0)?.ok_or_else(not_found)?;
            if found.bitfield || found.bit_offset % 8 != 0 {
                return Err(BtfError::NotByteAligned {
                    structure: structure.to_owned(),
                    member: path.to_owned(),
                });
            }
            bit_offset = add_offsets(bit_offset, found.bit_offset)?;
            type_id = found.type_id;
        }
        Ok(Member {
            offset: bit_offset / 8,
            size: self.size_of(type_id, 0)?,
        })
    }

    /// The struct or union that type `id` is, looking through typedefs and qualifiers.
    fn composite(&self, id: u32, depth: u32) -> Result<Option<u32>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed("type chain too deep"));
        }
        let header = self.header(id)?;
        match header.kind {
            KIND_STRUCT | KIND_UNION => Ok(Some(id)),
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                self.composite(header.size_or_type, depth + 1)
            }
            _ => Ok(None),
        }
    }

    /// `member` inside the struct or union `id`, if present, searching anonymous members
    /// `depth` levels down already.
    fn find_member(
        &self,
        id: u32,
        member: &str,
        depth: u32,
    ) -> Result<Option<FoundMember>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed("type chain too deep"));
        }
        let header = self.header(id)?;
        let start = self.start(id)? + TYPE_HEADER_LEN;
        for index in 0..header.vlen as usize {
            let at = start + index * 12;
            let name_off = read_u32(&self.types, at)?;
            let type_id = read_u32(&self.types, at + 4)?;
            let raw_offset = read_u32(&self.types, at + 8)?;
            // With kind_flag set, the top 8 bits hold a bitfield's size.
            let (bit_offset, bitfield) = if header.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24 != 0)
            } else {
                (raw_offset, false)
            };
            match self.name(name_off) {
                Some(name) if name == member => {
                    return Ok(Some(FoundMember {
                        bit_offset,
                        bitfield,
                        type_id,
                    }));
                }
                Some("") | None => {
                    let inner = self.header(type_id)?;
                    if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                        && let Some(found) = self.find_member(type_id, member, depth + 1)?
                    {
                        return Ok(Some(FoundMember {
                            bit_offset: add_offsets(bit_offset, found.bit_offset)?,
                            ..found
                        }));
                    }
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }

    /// Size in bytes of type `id`, looking through typedefs and qualifiers.
    fn size_of(&self, id: u32, depth: u32) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed("type chain too deep"));
        }
        let header = self.header(id)?;
        match header.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Ok(header.size_or_type)
            }
            KIND_PTR => Ok(8),
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                self.size_of(header.size_or_type, depth + 1)
            }
            KIND_ARRAY => {
                let at = self.start(id)? + TYPE_HEADER_LEN;
                let element = read_u32(&self.types, at)?;
                let count = read_u32(&self.types, at + 8)?;
                self.size_of(element, depth + 1)?
                    .checked_mul(count)
                    .ok_or(BtfError::Malformed("array size overflows"))
            }
            _ => Err(BtfError::Malformed("member of a type without a size")),
        }
    }

    fn start(&self, id: u32) -> Result<usize, BtfError> {
        id.checked_sub(1)
            .and_then(|index| self.starts.get(index as usize).copied())
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    fn header(&self, id: u32) -> Result<TypeHeader, BtfError> {
        TypeHeader::read(&self.types, self.start(id)?)
    }

    fn name(&self, offset: u32) -> Option<&str> {
        let tail = self.strings.get(offset as usize..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&tail[..end]).ok()
    }
}

/// A member found by name, relative to the struct searched.
struct FoundMember {
    bit_offset: u32,
    bitfield: bool,
    type_id: u32,
}

/// The common 12-byte header of every BTF type (`struct btf_type`).
#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    vlen: u32,
    kind: u32,
    kind_flag: bool,
    size_or_type: u32,
}

impl TypeHeader {
    fn read(types: &[u8], at: usize) -> Result<Self, BtfError> {
        let info = read_u32(types, at + 4)?;
        Ok(Self {
            name_off: read_u32(types, at)?,
            vlen: info & 0xffff,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 == 1,
            size_or_type: read_u32(types, at + 8)?,
        })
    }

    /// Bytes that follow the header for this kind.
    fn trailer_len(&self) -> Result<usize, BtfError> {
        let vlen = self.vlen as usize;
        Ok(match self.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
            KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            _ => return Err(BtfError::Malformed("unknown type kind")),
        })
    }
}

fn index_types(types: &[u8]) -> Result<Vec<usize>, BtfError> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at < types.len() {
        starts.push(at);
        let header = TypeHeader::read(types, at)?;
        at += TYPE_HEADER_LEN + header.trailer_len()?;
    }
    if at != types.len() {
        return Err(BtfError::Malformed("type section ends inside a type"));
    }
    Ok(starts)
}

fn add_offsets(a: u32, b: u32) -> Result<u32, BtfError> {
    a.checked_add(b)
        .ok_or(BtfError::Malformed("member offset overflows"))
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|bytes| u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob type by type, the way the kernel lays it out.
    #[derive(Default)]
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        fn new() -> Self {
            Self {
                strings: vec![0],
                next_id: 1,
                ..Self::default()
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            offset
        }

        fn push(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size: u32) -> u32 {
            let name_off = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            for word in [name_off, info, size] {
                self.types.extend_from_slice(&word.to_ne_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.push(name, KIND_INT, false, 0, size);
            self.types.extend_from_slice(&(size * 8).to_ne_bytes());
            id
        }

        fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.push(name, KIND_TYPEDEF, false, 0, target)
        }

        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.push(name, kind, false, members.len() as u32, size);
            for &(member, type_id, bit_offset) in members {
                let name_off = self.string(member);
                for word in [name_off, type_id, bit_offset] {
                    self.types.extend_from_slice(&word.to_ne_bytes());
                }
            }
            id
        }

        fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// `struct tcp_sock { int a; union { u64 x; struct { u32 lo; u64 bytes_acked; }; }; u64 bytes_received; }`
    fn sample() -> Btf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let ull = b.int("unsigned long long", 8);
        let u64_ = b.typedef("u64", ull);
        let inner = b.composite(
            KIND_STRUCT,
            "",
            16,
            &[("lo", int, 0), ("bytes_acked", u64_, 64)],
        );
        let union = b.composite(KIND_UNION, "", 16, &[("x", u64_, 0), ("", inner, 0)]);
        b.composite(
            KIND_STRUCT,
            "tcp_sock",
            32,
            &[
                ("a", int, 0),
                ("", union, 64),
                ("bytes_received", u64_, 192),
            ],
        );
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn finds_a_direct_member_through_a_typedef() {
        assert_eq!(
            sample().member("tcp_sock", "bytes_received").unwrap(),
            Member {
                offset: 24,
                size: 8
            }
        );
    }

    #[test]
    fn finds_a_member_inside_anonymous_unions_and_structs() {
        assert_eq!(
            sample().member("tcp_sock", "bytes_acked").unwrap(),
            Member {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            sample().member("tcp_sock", "a").unwrap(),
            Member { offset: 0, size: 4 }
        );
    }

    #[test]
    fn follows_a_dotted_path_through_a_typedef_of_an_anonymous_struct() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let ptr = b.push("", KIND_PTR, false, 0, int);
        let wrapper = b.composite(KIND_STRUCT, "", 8, &[("net", ptr, 0)]);
        let possible_net = b.typedef("possible_net_t", wrapper);
        let common = b.composite(
            KIND_STRUCT,
            "sock_common",
            24,
            &[("a", int, 0), ("skc_net", possible_net, 128)],
        );
        b.composite(
            KIND_STRUCT,
            "sock",
            64,
            &[("x", int, 0), ("__sk_common", common, 64)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            btf.member("sock", "__sk_common.skc_net.net").unwrap(),
            Member {
                offset: 24,
                size: 8
            }
        );
        assert_eq!(
            btf.member("sock", "__sk_common.nope")
                .unwrap_err()
                .to_string(),
            "BTF struct `sock` has no member `__sk_common.nope`"
        );
        assert!(btf.member("sock", "x.y").is_err(), "an int has no members");
    }

    #[test]
    fn reports_missing_structs_and_members() {
        let btf = sample();
        assert_eq!(
            btf.member("udp_sock", "x").unwrap_err().to_string(),
            "BTF has no struct named `udp_sock`"
        );
        assert_eq!(
            btf.member("tcp_sock", "srtt_us").unwrap_err().to_string(),
            "BTF struct `tcp_sock` has no member `srtt_us`"
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            Btf::parse(b"not btf at all, really"),
            Err(BtfError::Malformed(_))
        ));
        let mut truncated = sample_bytes();
        truncated.truncate(truncated.len() - 10);
        assert!(matches!(
            Btf::parse(&truncated),
            Err(BtfError::Malformed(_))
        ));
    }

    fn sample_bytes() -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        b.composite(KIND_STRUCT, "s", 4, &[("a", int, 0)]);
        b.build()
    }

    /// Property tests: whatever the bytes, parsing and lookups return a value or an error,
    /// never panic, loop or overflow the stack.
    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::super::*;

        /// The names in the generated string section, and those the lookups ask for.
        const NAMES: [&str; 7] = [
            "",
            "s",
            "a",
            "tcp_sock",
            "bytes_acked",
            "__sk_common",
            "skc_net",
        ];

        /// One `struct btf_type` with its trailer, fields drawn from small ranges (so that
        /// ids and names refer to each other, forming chains and cycles) or from anywhere.
        #[derive(Debug, Clone)]
        struct RawType {
            name_off: u32,
            info: u32,
            size_or_type: u32,
            trailer: Vec<u32>,
        }

        /// Offsets of [`NAMES`] in the string section `blob` builds.
        fn name_offsets() -> Vec<u32> {
            NAMES
                .iter()
                .scan(0, |at, name| {
                    let offset = *at;
                    *at += name.len() as u32 + 1;
                    Some(offset)
                })
                .collect()
        }

        /// A word of a type: a name, a small id, size or count, or anything.
        fn word() -> impl Strategy<Value = u32> {
            prop_oneof![
                3 => prop::sample::select(name_offsets()),
                4 => 0u32..12,
                1 => any::<u32>(),
            ]
        }

        fn raw_type() -> impl Strategy<Value = RawType> {
            let kind = prop_oneof![
                3 => Just(KIND_STRUCT),
                1 => Just(KIND_UNION),
                1 => Just(KIND_TYPEDEF),
                1 => Just(KIND_ARRAY),
                1 => Just(KIND_INT),
                3 => 1u32..=19,
                1 => 0u32..32,
            ];
            // Trailer words as (name, type, bit offset) triples, the layout of a member; an
            // array reads one as (element type, index type, count).
            let member = (
                prop_oneof![6 => prop::sample::select(name_offsets()), 1 => any::<u32>()],
                prop_oneof![6 => 0u32..12, 1 => any::<u32>()],
                prop_oneof![4 => (0u32..8).prop_map(|bytes| bytes * 8), 1 => any::<u32>()],
            )
                .prop_map(|(a, b, c)| [a, b, c]);
            let pool = vec(member, 4).prop_map(|triples| triples.concat());
            (kind, any::<bool>(), 0u32..4, word(), word(), pool).prop_map(
                |(kind, kind_flag, vlen, name_off, size_or_type, pool)| {
                    let header = TypeHeader {
                        name_off,
                        vlen,
                        kind,
                        kind_flag,
                        size_or_type,
                    };
                    // An unknown kind gets no trailer (and is refused by the parser).
                    let words = header.trailer_len().map_or(0, |len| len / 4);
                    RawType {
                        name_off,
                        info: (u32::from(kind_flag) << 31) | (kind << 24) | vlen,
                        size_or_type,
                        trailer: pool[..words].to_vec(),
                    }
                },
            )
        }

        fn blob(types: &[RawType]) -> Vec<u8> {
            let mut strings = Vec::new();
            for name in NAMES {
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
            }
            let mut section = Vec::new();
            for t in types {
                for word in [t.name_off, t.info, t.size_or_type]
                    .iter()
                    .chain(&t.trailer)
                {
                    section.extend_from_slice(&word.to_ne_bytes());
                }
            }
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            let lens = [section.len() as u32, strings.len() as u32];
            for word in [HEADER_LEN as u32, 0, lens[0], lens[0], lens[1]] {
                out.extend_from_slice(&word.to_ne_bytes());
            }
            out.extend_from_slice(&section);
            out.extend_from_slice(&strings);
            out
        }

        /// Every name as a struct, with every name and every dotted pair of names as a path.
        fn look_up_everything(btf: &Btf) {
            for structure in NAMES {
                for first in NAMES {
                    let _ = btf.member(structure, first);
                    for second in NAMES {
                        let _ = btf.member(structure, &format!("{first}.{second}"));
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn arbitrary_bytes_never_panic(mut data in vec(any::<u8>(), 0..512), magic: bool) {
                if magic && data.len() >= 2 {
                    data[..2].copy_from_slice(&MAGIC.to_ne_bytes());
                }
                if let Ok(btf) = Btf::parse(&data) {
                    look_up_everything(&btf);
                }
            }

            #[test]
            fn well_framed_garbage_types_never_panic(types in vec(raw_type(), 0..12)) {
                let data = blob(&types);
                if let Ok(btf) = Btf::parse(&data) {
                    look_up_everything(&btf);
                }
                // Every truncation of a framed blob is refused or parsed, never a panic.
                for cut in [1, 5, 13] {
                    if let Some(len) = data.len().checked_sub(cut) {
                        let _ = Btf::parse(&data[..len]).map(|btf| look_up_everything(&btf));
                    }
                }
            }
        }

        #[test]
        fn a_struct_that_contains_itself_is_refused_not_a_stack_overflow() {
            // struct s { <anonymous> struct s; } : a loop only a malformed file can have.
            let mut b = super::BtfBuilder::new();
            b.composite(KIND_STRUCT, "s", 4, &[("", 1, 0)]);
            let btf = Btf::parse(&b.build()).unwrap();
            assert_eq!(
                btf.member("s", "a").unwrap_err().to_string(),
                "malformed BTF: type chain too deep"
            );
        }

        #[test]
        fn an_array_whose_size_overflows_is_refused() {
            // struct s { u64 a[0x4000_0000]; }: 8 GiB does not fit a u32 size.
            let mut b = super::BtfBuilder::new();
            let ull = b.int("unsigned long long", 8);
            let array = b.push("", KIND_ARRAY, false, 0, 0);
            for word in [ull, ull, 0x4000_0000] {
                b.types.extend_from_slice(&word.to_ne_bytes());
            }
            b.composite(KIND_STRUCT, "s", 8, &[("a", array, 0)]);
            let btf = Btf::parse(&b.build()).unwrap();
            assert_eq!(
                btf.member("s", "a").unwrap_err().to_string(),
                "malformed BTF: array size overflows"
            );
        }
    }
}
