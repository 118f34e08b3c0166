//! The seccomp filter of namespace sandboxes: no new setuid/setgid files
//! and no file capabilities.
//!
//! When root creates a sandbox its user namespace maps uid 0 inside to uid 0
//! outside, so a file that root inside makes setuid (or gives a file
//! capability) in a writable bind volume is setuid root *on the host*: any
//! host user who can reach the directory gains root. Mount flags cannot
//! help (`nosuid` only affects the sandbox's own view), so the filter
//! refuses to create such files at all:
//!
//! - `chmod`, `fchmod`, `fchmodat`, `fchmodat2`, `creat`, `mknod`,
//!   `mknodat`, and `open`/`openat` with `O_CREAT`, when the mode has
//!   `S_ISUID` or `S_ISGID`: `EPERM`;
//! - `openat2` (its mode is behind a pointer the filter cannot read):
//!   `ENOSYS`, so C libraries fall back to `openat`;
//! - the `setxattr` family: `EOPNOTSUPP` (a `security.capability` xattr is
//!   a file capability; the name is behind a pointer too), which tools
//!   copying extended attributes treat as "not supported here";
//! - the x32 ABI: `EPERM`.
//!
//! Setuid files already in the image keep working inside (they were made
//! by the unpacker on the host); only new ones are refused. x86-64 only;
//! elsewhere the filter is empty (nothing installed).

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// The x32 ABI's syscall-number bit.
const X32_BIT: u32 = 0x4000_0000;
/// `S_ISUID | S_ISGID`.
const SET_ID_BITS: u32 = 0o6000;

/// `struct seccomp_data` offsets.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg(i: u32) -> u32 {
    16 + 8 * i
}

// x86-64 syscall numbers.
const OPEN: u32 = 2;
const CREAT: u32 = 85;
const CHMOD: u32 = 90;
const FCHMOD: u32 = 91;
const MKNOD: u32 = 133;
const SETXATTR: u32 = 188;
const LSETXATTR: u32 = 189;
const FSETXATTR: u32 = 190;
const OPENAT: u32 = 257;
const MKNODAT: u32 = 259;
const FCHMODAT: u32 = 268;
const OPENAT2: u32 = 437;
const FCHMODAT2: u32 = 452;
const SETXATTRAT: u32 = 463;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn load(offset: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(value: u32) -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, value)
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// The filter program (empty where it does not apply).
pub(super) fn program() -> Vec<libc::sock_filter> {
    if !cfg!(target_arch = "x86_64") {
        return Vec::new();
    }
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let jset = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
    let mut p = vec![
        load(ARCH),
        jump(jeq, AUDIT_ARCH_X86_64, 1, 0),
        ret(libc::SECCOMP_RET_ALLOW),
        load(NR),
        jump(jset, X32_BIT, 0, 1),
        ret(errno(libc::EPERM)),
    ];
    // `nr` with its mode in argument `mode_arg`: refuse set-id bits.
    for (nr, mode_arg) in [
        (CHMOD, 1),
        (FCHMOD, 1),
        (FCHMODAT, 2),
        (FCHMODAT2, 2),
        (CREAT, 1),
        (MKNOD, 1),
        (MKNODAT, 2),
    ] {
        p.extend([
            load(NR),
            jump(jeq, nr, 0, 3),
            load(arg(mode_arg)),
            jump(jset, SET_ID_BITS, 0, 1),
            ret(errno(libc::EPERM)),
        ]);
    }
    // `open`-like: only with O_CREAT does the mode matter.
    for (nr, flags_arg, mode_arg) in [(OPEN, 1, 2), (OPENAT, 2, 3)] {
        p.extend([
            load(NR),
            jump(jeq, nr, 0, 5),
            load(arg(flags_arg)),
            jump(jset, libc::O_CREAT as u32, 0, 3),
            load(arg(mode_arg)),
            jump(jset, SET_ID_BITS, 0, 1),
            ret(errno(libc::EPERM)),
        ]);
    }
    p.extend([load(NR), jump(jeq, OPENAT2, 0, 1), ret(errno(libc::ENOSYS))]);
    for nr in [SETXATTR, LSETXATTR, FSETXATTR, SETXATTRAT] {
        p.extend([load(NR), jump(jeq, nr, 0, 1), ret(errno(libc::EOPNOTSUPP))]);
    }
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = program();
        if p.is_empty() {
            return;
        }
        for (i, ins) in p.iter().enumerate() {
            if u32::from(ins.code) & 0x07 == libc::BPF_JMP {
                assert!(i + 1 + usize::from(ins.jt) < p.len(), "jt of {i}");
                assert!(i + 1 + usize::from(ins.jf) < p.len(), "jf of {i}");
            }
        }
        assert_eq!(
            u32::from(p.last().unwrap().code),
            libc::BPF_RET | libc::BPF_K
        );
        assert!(p.len() < 4096, "BPF_MAXINSNS");
    }
}
