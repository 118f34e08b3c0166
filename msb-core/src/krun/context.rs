//! [`KrunContext`]: one libkrun configuration context, freed on drop.

use std::ffi::{CString, c_char};
use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::path::Path;

use super::error::{KrunError, error};
use super::ffi::{CStringArray, check, check_value, path_c_string, str_c_string};

/// The virtio-fs tag libkrun gives the root filesystem set by
/// [`KrunContext::set_root`]; pass it to [`KrunContext::fs_add_overlay_file`]
/// and [`KrunContext::fs_add_overlay_dir`] to add files to the guest's `/`.
pub const ROOT_FS_TAG: &str = "/dev/root";

/// One resource limit for the guest's init to apply with `setrlimit(2)`.
///
/// libkrun passes limits to the guest as `"<resource>=<soft>:<hard>"` entries,
/// where `<resource>` is the numeric `RLIMIT_*` constant; see
/// [`Rlimit::to_krun_string`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// The numeric resource, e.g. `libc::RLIMIT_NOFILE`.
    pub resource: u32,
    /// The soft limit (`rlim_cur`); [`Rlimit::INFINITY`] for none.
    pub soft: u64,
    /// The hard limit (`rlim_max`); [`Rlimit::INFINITY`] for none.
    pub hard: u64,
}

impl Rlimit {
    /// `RLIM_INFINITY`: no limit.
    pub const INFINITY: u64 = u64::MAX;

    /// A limit on `resource` with the given soft and hard values.
    pub fn new(resource: u32, soft: u64, hard: u64) -> Self {
        Self {
            resource,
            soft,
            hard,
        }
    }

    /// The entry as libkrun's guest init parses it: `"<resource>=<soft>:<hard>"`.
    pub fn to_krun_string(&self) -> String {
        format!("{}={}:{}", self.resource, self.soft, self.hard)
    }
}

/// The longest virtio-fs tag, in bytes: the size of the tag field in the
/// device's configuration space. libkrun does not check it, and its VMM
/// panics at boot on a longer one.
pub const VIRTIOFS_TAG_MAX: usize = 36;

/// The longest path of a Unix socket, in bytes (`sun_path` less its NUL).
const UNIX_PATH_MAX: usize = 107;

/// Options for [`KrunContext::add_virtiofs_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtiofsOptions {
    /// Size in bytes of the DAX shared-memory window; `0` for libkrun's
    /// default (none).
    pub shm_size: u64,
    /// Share the directory read-only.
    pub read_only: bool,
}

/// The format of a kernel image given to [`KrunContext::set_kernel`]
/// (libkrun's `KRUN_KERNEL_FORMAT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum KernelFormat {
    /// An uncompressed kernel image.
    Raw = krun_sys::KRUN_KERNEL_FORMAT_RAW,
    /// An ELF kernel (`vmlinux`).
    Elf = krun_sys::KRUN_KERNEL_FORMAT_ELF,
    /// A gzip-compressed PE image.
    PeGz = krun_sys::KRUN_KERNEL_FORMAT_PE_GZ,
    /// A bzip2-compressed `Image`.
    ImageBz2 = krun_sys::KRUN_KERNEL_FORMAT_IMAGE_BZ2,
    /// A gzip-compressed `Image`.
    ImageGz = krun_sys::KRUN_KERNEL_FORMAT_IMAGE_GZ,
    /// A zstd-compressed `Image`.
    ImageZstd = krun_sys::KRUN_KERNEL_FORMAT_IMAGE_ZSTD,
}

/// A libkrun configuration context: the description of one microVM.
///
/// Created with [`KrunContext::new`], configured with one method per libkrun
/// call, and either booted with [`KrunContext::start_enter`] (which takes over
/// the process) or dropped, which frees the context with `krun_free_ctx`.
///
/// # Threads
///
/// libkrun keeps every context in one process-global map behind a `Mutex`,
/// and each call locks it, so a context may be configured from any thread:
/// `KrunContext` is `Send`. It is also `Sync`, which is harmless because every
/// configuration method takes `&mut self`; through `&KrunContext` one can only
/// read the id.
pub struct KrunContext {
    id: u32,
    /// Payloads of overlay files: libkrun keeps pointers to them (without
    /// copying) until the VM stops, so they live as long as the context, and
    /// are leaked once the VM may have started.
    overlay_data: Vec<Box<[u8]>>,
}

impl fmt::Debug for KrunContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KrunContext")
            .field("id", &self.id)
            .field("overlay_files", &self.overlay_data.len())
            .finish()
    }
}

/// Checks that `path` is an existing directory; libkrun only records the path
/// and would fail much later, inside the VM process.
fn require_dir(call: &'static str, path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(error(
            call,
            libc::ENOTDIR,
            format!("{} is not a directory", path.display()),
        )),
        Err(e) => Err(error(
            call,
            e.raw_os_error().unwrap_or(libc::EINVAL),
            format!("cannot use {}: {e}", path.display()),
        )),
    }
}

/// Checks that `path` is an existing regular file (or a symlink to one).
fn require_file(call: &'static str, path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(error(
            call,
            libc::EINVAL,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(error(
            call,
            e.raw_os_error().unwrap_or(libc::EINVAL),
            format!("cannot use {}: {e}", path.display()),
        )),
    }
}

/// libkrun puts the exec path and working directory unquoted on the guest
/// kernel command line, and args and environment entries inside `"..."`,
/// with no escaping: reject what would be split or cut short there.
fn require_cmdline_safe(
    call: &'static str,
    what: &str,
    value: &str,
    quoted: bool,
) -> io::Result<()> {
    let bad = |c: char| c == '"' || (!quoted && c.is_whitespace());
    if value.contains(bad) {
        let allowed = if quoted {
            "double quotes"
        } else {
            "whitespace or double quotes"
        };
        return Err(error(
            call,
            libc::EINVAL,
            format!(
                "{what} {value:?} contains {allowed}, which libkrun cannot pass on the guest kernel command line"
            ),
        ));
    }
    Ok(())
}

/// Turns `(key, value)` pairs into the `KEY=value` entries libkrun takes.
///
/// The key must be non-empty and hold no `=`, and no `.`: the guest kernel
/// takes `a.b=c` for a module parameter and never passes it to init. Neither
/// part may hold a double quote (see [`require_cmdline_safe`]).
fn env_entries<K: AsRef<str>, V: AsRef<str>>(
    call: &'static str,
    env: &[(K, V)],
) -> io::Result<Vec<String>> {
    env.iter()
        .map(|(key, value)| {
            let (key, value) = (key.as_ref(), value.as_ref());
            if key.is_empty() || key.contains(['=', '.']) {
                return Err(error(
                    call,
                    libc::EINVAL,
                    format!("environment variable name {key:?} is empty or contains '=' or '.'"),
                ));
            }
            let entry = format!("{key}={value}");
            require_cmdline_safe(call, "environment entry", &entry, true)?;
            Ok(entry)
        })
        .collect()
}

/// Checks a virtio-fs tag: at most [`VIRTIOFS_TAG_MAX`] bytes, not empty.
fn require_tag(call: &'static str, tag: &str) -> io::Result<()> {
    if tag.is_empty() || tag.len() > VIRTIOFS_TAG_MAX {
        return Err(error(
            call,
            libc::EINVAL,
            format!("virtio-fs tag {tag:?} must be 1 to {VIRTIOFS_TAG_MAX} bytes long"),
        ));
    }
    Ok(())
}

/// Checks that a Unix socket path fits `sun_path`; libkrun would only fail
/// when the VM starts.
fn require_socket_path(call: &'static str, path: &Path) -> io::Result<()> {
    let len = path.as_os_str().len();
    if len > UNIX_PATH_MAX {
        return Err(error(
            call,
            libc::ENAMETOOLONG,
            format!(
                "socket path {} is {len} bytes, a Unix socket path holds at most {UNIX_PATH_MAX}",
                path.display()
            ),
        ));
    }
    Ok(())
}

impl KrunContext {
    /// Creates a context (`krun_create_ctx`).
    pub fn new() -> io::Result<Self> {
        // SAFETY: krun_create_ctx takes no arguments and only touches
        // libkrun's own mutex-protected context map.
        let ret = unsafe { krun_sys::krun_create_ctx() };
        let id = check_value("krun_create_ctx", ret)?;
        Ok(Self::from_raw_id(id))
    }

    /// Wraps an existing context id; the returned value frees it on drop.
    pub(crate) fn from_raw_id(id: u32) -> Self {
        Self {
            id,
            overlay_data: Vec::new(),
        }
    }

    /// The context id libkrun assigned.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sets the number of vCPUs and the guest memory in MiB
    /// (`krun_set_vm_config`). Zero vCPUs or zero MiB give `EINVAL`.
    pub fn set_vm_config(&mut self, vcpus: u8, ram_mib: u32) -> io::Result<()> {
        // SAFETY: plain integer arguments.
        let ret = unsafe { krun_sys::krun_set_vm_config(self.id, vcpus, ram_mib) };
        check("krun_set_vm_config", ret)
    }

    /// Shares the host directory `root` as the guest's root filesystem
    /// (`krun_set_root`). Fails with `NotFound` or `NotADirectory` when `root`
    /// is missing or not a directory (libkrun itself does not check).
    pub fn set_root(&mut self, root: &Path) -> io::Result<()> {
        const CALL: &str = "krun_set_root";
        let c_root = path_c_string(CALL, "root path", root)?;
        require_dir(CALL, root)?;
        // SAFETY: c_root is a valid NUL-terminated string that outlives the
        // call; libkrun copies it.
        let ret = unsafe { krun_sys::krun_set_root(self.id, c_root.as_ptr()) };
        check(CALL, ret)
    }

    /// Shares the host directory `path` with the guest as virtio-fs `tag`
    /// (`krun_add_virtiofs`); the guest mounts it with
    /// `mount -t virtiofs <tag> <dir>`. Fails with `NotFound` or
    /// `NotADirectory` when `path` is missing or not a directory, and with
    /// `InvalidInput` for a tag longer than [`VIRTIOFS_TAG_MAX`] bytes (none
    /// of which libkrun itself checks).
    pub fn add_virtiofs(&mut self, tag: &str, path: &Path) -> io::Result<()> {
        const CALL: &str = "krun_add_virtiofs";
        let c_tag = str_c_string(CALL, "tag", tag)?;
        let c_path = path_c_string(CALL, "path", path)?;
        require_tag(CALL, tag)?;
        require_dir(CALL, path)?;
        // SAFETY: both are valid NUL-terminated strings that outlive the call;
        // libkrun copies them.
        let ret = unsafe { krun_sys::krun_add_virtiofs(self.id, c_tag.as_ptr(), c_path.as_ptr()) };
        check(CALL, ret)
    }

    /// [`add_virtiofs`](Self::add_virtiofs) with a DAX window size and a
    /// read-only flag (`krun_add_virtiofs3`); the same checks apply.
    pub fn add_virtiofs_with(
        &mut self,
        tag: &str,
        path: &Path,
        options: VirtiofsOptions,
    ) -> io::Result<()> {
        const CALL: &str = "krun_add_virtiofs3";
        let c_tag = str_c_string(CALL, "tag", tag)?;
        let c_path = path_c_string(CALL, "path", path)?;
        require_tag(CALL, tag)?;
        require_dir(CALL, path)?;
        // SAFETY: both are valid NUL-terminated strings that outlive the call;
        // libkrun copies them.
        let ret = unsafe {
            krun_sys::krun_add_virtiofs3(
                self.id,
                c_tag.as_ptr(),
                c_path.as_ptr(),
                options.shm_size,
                options.read_only,
            )
        };
        check(CALL, ret)
    }

    /// Sets the program the guest runs, its arguments (without `argv[0]`) and
    /// its whole environment as `(name, value)` pairs (`krun_set_exec`). The
    /// host environment is never passed on: an empty `env` means an empty
    /// environment.
    ///
    /// libkrun hands all of this to the guest on the kernel command line
    /// without escaping, so the exec path may not contain whitespace, no
    /// string may contain a double quote, and variable names may not contain
    /// `=` or `.`; those give `InvalidInput` here.
    pub fn set_exec<A, K, V>(
        &mut self,
        exec_path: &str,
        args: &[A],
        env: &[(K, V)],
    ) -> io::Result<()>
    where
        A: AsRef<str>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        const CALL: &str = "krun_set_exec";
        let c_exec = str_c_string(CALL, "exec path", exec_path)?;
        require_cmdline_safe(CALL, "exec path", exec_path, false)?;
        for arg in args {
            require_cmdline_safe(CALL, "argument", arg.as_ref(), true)?;
        }
        let env = env_entries(CALL, env)?;
        let c_args = CStringArray::new(CALL, "argument", args)?;
        let c_env = CStringArray::new(CALL, "environment entry", &env)?;
        // SAFETY: c_exec is a valid C string and c_args / c_env are
        // NULL-terminated arrays of valid C strings, all outliving the call;
        // libkrun copies them.
        let ret = unsafe {
            krun_sys::krun_set_exec(self.id, c_exec.as_ptr(), c_args.as_ptr(), c_env.as_ptr())
        };
        check(CALL, ret)
    }

    /// Replaces the guest program's environment with `(name, value)` pairs
    /// (`krun_set_env`), with the checks of [`set_exec`](Self::set_exec). The
    /// host environment is never passed on.
    pub fn set_env<K: AsRef<str>, V: AsRef<str>>(&mut self, env: &[(K, V)]) -> io::Result<()> {
        const CALL: &str = "krun_set_env";
        let env = env_entries(CALL, env)?;
        let c_env = CStringArray::new(CALL, "environment entry", &env)?;
        // SAFETY: c_env is a NULL-terminated array of valid C strings that
        // outlives the call; libkrun copies it.
        let ret = unsafe { krun_sys::krun_set_env(self.id, c_env.as_ptr()) };
        check(CALL, ret)
    }

    /// Sets the guest program's working directory, a path inside the guest
    /// (`krun_set_workdir`).
    pub fn set_workdir(&mut self, workdir: &str) -> io::Result<()> {
        const CALL: &str = "krun_set_workdir";
        let c_workdir = str_c_string(CALL, "working directory", workdir)?;
        require_cmdline_safe(CALL, "working directory", workdir, false)?;
        // SAFETY: c_workdir is a valid C string that outlives the call.
        let ret = unsafe { krun_sys::krun_set_workdir(self.id, c_workdir.as_ptr()) };
        check(CALL, ret)
    }

    /// Connects guest vsock `port` to the host Unix socket at `path`, which
    /// the host side listens on (`krun_add_vsock_port`): libkrun connects to
    /// it when the guest connects to `port`. `ENODEV` if vsock was disabled;
    /// `ENAMETOOLONG` (checked here) for a path too long for a Unix socket.
    pub fn add_vsock_port(&mut self, port: u32, path: &Path) -> io::Result<()> {
        const CALL: &str = "krun_add_vsock_port";
        let c_path = path_c_string(CALL, "socket path", path)?;
        require_socket_path(CALL, path)?;
        // SAFETY: c_path is a valid C string that outlives the call.
        let ret = unsafe { krun_sys::krun_add_vsock_port(self.id, port, c_path.as_ptr()) };
        check(CALL, ret)
    }

    /// Like [`add_vsock_port`](Self::add_vsock_port); with `listen`, libkrun
    /// creates and listens on the socket at `path` itself, and fails with
    /// `EEXIST` if `path` already exists (`krun_add_vsock_port2`).
    pub fn add_vsock_port2(&mut self, port: u32, path: &Path, listen: bool) -> io::Result<()> {
        const CALL: &str = "krun_add_vsock_port2";
        let c_path = path_c_string(CALL, "socket path", path)?;
        require_socket_path(CALL, path)?;
        // SAFETY: c_path is a valid C string that outlives the call.
        let ret = unsafe { krun_sys::krun_add_vsock_port2(self.id, port, c_path.as_ptr(), listen) };
        check(CALL, ret)
    }

    /// Maps host TCP ports to guest ports through TSI (`krun_set_port_map`),
    /// as `(host, guest)` pairs. libkrun rejects a guest or host port used
    /// twice with `EINVAL`, as it does any port map once a virtio-net device
    /// was added, and gives `ENODEV` if vsock was disabled. An empty slice
    /// sets an empty map.
    pub fn set_port_map(&mut self, ports: &[(u16, u16)]) -> io::Result<()> {
        let entries: Vec<String> = ports
            .iter()
            .map(|(host, guest)| format!("{host}:{guest}"))
            .collect();
        self.set_port_map_raw(&entries)
    }

    /// [`set_port_map`](Self::set_port_map) with `"host:guest"` strings
    /// parsed by libkrun itself: anything else (`"80"`, `"a:b"`,
    /// `"70000:80"`) gives `EINVAL`.
    pub fn set_port_map_raw<S: AsRef<str>>(&mut self, entries: &[S]) -> io::Result<()> {
        const CALL: &str = "krun_set_port_map";
        let c_entries = CStringArray::new(CALL, "port mapping", entries)?;
        // SAFETY: c_entries is a NULL-terminated array of valid C strings that
        // outlives the call; libkrun copies what it parses.
        let ret = unsafe { krun_sys::krun_set_port_map(self.id, c_entries.as_ptr()) };
        check(CALL, ret)
    }

    /// Sets resource limits the guest init applies before starting the
    /// program (`krun_set_rlimits`). A soft limit above the hard one is
    /// rejected with `EINVAL` (the guest would only print an error).
    ///
    /// An empty slice changes nothing and does not reach libkrun: libkrun
    /// would pass an empty list on, which its guest init misparses as
    /// resource `0` (`RLIMIT_CPU`). Limits once set cannot be cleared.
    pub fn set_rlimits(&mut self, rlimits: &[Rlimit]) -> io::Result<()> {
        const CALL: &str = "krun_set_rlimits";
        if rlimits.is_empty() {
            return Ok(());
        }
        if let Some(bad) = rlimits.iter().find(|r| r.soft > r.hard) {
            return Err(error(
                CALL,
                libc::EINVAL,
                format!(
                    "resource {}: soft limit {} exceeds hard limit {}",
                    bad.resource, bad.soft, bad.hard
                ),
            ));
        }
        let entries: Vec<String> = rlimits.iter().map(Rlimit::to_krun_string).collect();
        let c_entries = CStringArray::new(CALL, "rlimit", &entries)?;
        // SAFETY: c_entries is a NULL-terminated array of valid C strings that
        // outlives the call; libkrun copies them.
        let ret = unsafe { krun_sys::krun_set_rlimits(self.id, c_entries.as_ptr()) };
        check(CALL, ret)
    }

    /// Writes the guest console to the host file at `path`
    /// (`krun_set_console_output`); `EINVAL` if it was already set.
    pub fn set_console_output(&mut self, path: &Path) -> io::Result<()> {
        const CALL: &str = "krun_set_console_output";
        let c_path = path_c_string(CALL, "console output path", path)?;
        // SAFETY: c_path is a valid C string that outlives the call.
        let ret = unsafe { krun_sys::krun_set_console_output(self.id, c_path.as_ptr()) };
        check(CALL, ret)
    }

    /// Adds a file that exists only in the guest's view of the virtio-fs
    /// `tag` ([`ROOT_FS_TAG`] for the root) at `path`, with contents `data`
    /// and permission bits `mode`; with `one_shot` it disappears after its
    /// first read (`krun_fs_add_overlay_file`). `ENOENT` for an unknown tag
    /// or a missing parent, `ENOTDIR` for a parent that is a file.
    ///
    /// The data is copied and kept alive for as long as the VM may use it.
    pub fn fs_add_overlay_file(
        &mut self,
        tag: &str,
        path: &str,
        data: &[u8],
        mode: u32,
        one_shot: bool,
    ) -> io::Result<()> {
        const CALL: &str = "krun_fs_add_overlay_file";
        let c_tag = str_c_string(CALL, "tag", tag)?;
        let c_path = str_c_string(CALL, "path", path)?;
        let data: Box<[u8]> = data.into();
        // SAFETY: c_tag and c_path are valid C strings that outlive the call.
        // libkrun keeps data's pointer without copying; the boxed buffer never
        // moves and is owned by self until drop, and is leaked by start_enter,
        // so it outlives every use.
        let ret = unsafe {
            krun_sys::krun_fs_add_overlay_file(
                self.id,
                c_tag.as_ptr(),
                c_path.as_ptr(),
                data.as_ptr(),
                data.len(),
                mode,
                one_shot,
            )
        };
        check(CALL, ret)?;
        self.overlay_data.push(data);
        Ok(())
    }

    /// Adds an empty directory that exists only in the guest's view of the
    /// virtio-fs `tag`, at `path`, with permission bits `mode`
    /// (`krun_fs_add_overlay_dir`).
    pub fn fs_add_overlay_dir(&mut self, tag: &str, path: &str, mode: u32) -> io::Result<()> {
        const CALL: &str = "krun_fs_add_overlay_dir";
        let c_tag = str_c_string(CALL, "tag", tag)?;
        let c_path = str_c_string(CALL, "path", path)?;
        // SAFETY: c_tag and c_path are valid C strings that outlive the call;
        // libkrun copies them.
        let ret = unsafe {
            krun_sys::krun_fs_add_overlay_dir(self.id, c_tag.as_ptr(), c_path.as_ptr(), mode)
        };
        check(CALL, ret)
    }

    /// Stops libkrun from adding its built-in init to the root filesystem
    /// (`krun_disable_implicit_init`); call before [`set_root`](Self::set_root).
    pub fn disable_implicit_init(&mut self) -> io::Result<()> {
        // SAFETY: plain integer argument.
        let ret = unsafe { krun_sys::krun_disable_implicit_init(self.id) };
        check("krun_disable_implicit_init", ret)
    }

    /// Stops libkrun from adding its default console device
    /// (`krun_disable_implicit_console`).
    pub fn disable_implicit_console(&mut self) -> io::Result<()> {
        // SAFETY: plain integer argument.
        let ret = unsafe { krun_sys::krun_disable_implicit_console(self.id) };
        check("krun_disable_implicit_console", ret)
    }

    /// Stops libkrun from adding its default vsock device
    /// (`krun_disable_implicit_vsock`); vsock ports and port maps then fail
    /// with `ENODEV` until [`add_vsock`](Self::add_vsock).
    pub fn disable_implicit_vsock(&mut self) -> io::Result<()> {
        // SAFETY: plain integer argument.
        let ret = unsafe { krun_sys::krun_disable_implicit_vsock(self.id) };
        check("krun_disable_implicit_vsock", ret)
    }

    /// Adds a vsock device with the given TSI flags (bit 0: hijack inet
    /// sockets, bit 1: hijack Unix sockets) after
    /// [`disable_implicit_vsock`](Self::disable_implicit_vsock)
    /// (`krun_add_vsock`). `EEXIST` if a vsock device is already configured,
    /// `EINVAL` for unknown flags.
    pub fn add_vsock(&mut self, tsi_features: u32) -> io::Result<()> {
        // SAFETY: plain integer arguments.
        let ret = unsafe { krun_sys::krun_add_vsock(self.id, tsi_features) };
        check("krun_add_vsock", ret)
    }

    /// Makes the VMM switch to user `uid` before starting the VM
    /// (`krun_setuid`).
    pub fn setuid(&mut self, uid: u32) -> io::Result<()> {
        // SAFETY: plain integer arguments.
        let ret = unsafe { krun_sys::krun_setuid(self.id, uid) };
        check("krun_setuid", ret)
    }

    /// Makes the VMM switch to group `gid` before starting the VM
    /// (`krun_setgid`).
    pub fn setgid(&mut self, gid: u32) -> io::Result<()> {
        // SAFETY: plain integer arguments.
        let ret = unsafe { krun_sys::krun_setgid(self.id, gid) };
        check("krun_setgid", ret)
    }

    /// Enables or disables nested virtualization in the guest
    /// (`krun_set_nested_virt`); see [`check_nested_virt`](super::check_nested_virt).
    pub fn set_nested_virt(&mut self, enabled: bool) -> io::Result<()> {
        // SAFETY: plain integer and bool arguments.
        let ret = unsafe { krun_sys::krun_set_nested_virt(self.id, enabled) };
        check("krun_set_nested_virt", ret)
    }

    /// Enables or disables KVM's split IRQ chip (`krun_split_irqchip`);
    /// enabling it is `EINVAL` except on x86_64.
    pub fn split_irqchip(&mut self, enable: bool) -> io::Result<()> {
        // SAFETY: plain integer and bool arguments.
        let ret = unsafe { krun_sys::krun_split_irqchip(self.id, enable) };
        check("krun_split_irqchip", ret)
    }

    /// Sets the SMBIOS OEM strings the guest sees
    /// (`krun_set_smbios_oem_strings`); an empty slice clears them.
    pub fn set_smbios_oem_strings<S: AsRef<str>>(&mut self, strings: &[S]) -> io::Result<()> {
        const CALL: &str = "krun_set_smbios_oem_strings";
        let c_strings = CStringArray::new(CALL, "OEM string", strings)?;
        // SAFETY: c_strings is a NULL-terminated array of valid C strings that
        // outlives the call; libkrun copies them.
        let ret = unsafe { krun_sys::krun_set_smbios_oem_strings(self.id, c_strings.as_ptr()) };
        check(CALL, ret)
    }

    /// Boots an external kernel instead of libkrunfw's (`krun_set_kernel`),
    /// with an optional initramfs and kernel command line. Fails with
    /// `NotFound` when the kernel or initramfs is missing; libkrun itself
    /// answers `EINVAL` for a raw kernel it cannot map.
    pub fn set_kernel(
        &mut self,
        kernel: &Path,
        format: KernelFormat,
        initramfs: Option<&Path>,
        cmdline: Option<&str>,
    ) -> io::Result<()> {
        const CALL: &str = "krun_set_kernel";
        let c_kernel = path_c_string(CALL, "kernel path", kernel)?;
        let c_initramfs = initramfs
            .map(|p| path_c_string(CALL, "initramfs path", p))
            .transpose()?;
        let c_cmdline = cmdline
            .map(|c| str_c_string(CALL, "kernel command line", c))
            .transpose()?;
        require_file(CALL, kernel)?;
        if let Some(initramfs) = initramfs {
            require_file(CALL, initramfs)?;
        }
        let opt_ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let (initramfs_ptr, cmdline_ptr): (*const c_char, *const c_char) =
            (opt_ptr(&c_initramfs), opt_ptr(&c_cmdline));
        // SAFETY: c_kernel is a valid C string; initramfs_ptr and cmdline_ptr
        // are NULL (allowed: "none") or point into C strings that outlive the
        // call. libkrun copies them.
        let ret = unsafe {
            krun_sys::krun_set_kernel(
                self.id,
                c_kernel.as_ptr(),
                format as u32,
                initramfs_ptr,
                cmdline_ptr,
            )
        };
        check(CALL, ret)
    }

    /// Boots the guest through the firmware image at `path`
    /// (`krun_set_firmware`); `NotFound` when it is missing.
    pub fn set_firmware(&mut self, path: &Path) -> io::Result<()> {
        const CALL: &str = "krun_set_firmware";
        let c_path = path_c_string(CALL, "firmware path", path)?;
        require_file(CALL, path)?;
        // SAFETY: c_path is a valid C string that outlives the call.
        let ret = unsafe { krun_sys::krun_set_firmware(self.id, c_path.as_ptr()) };
        check(CALL, ret)
    }

    /// Boots the VM and runs it in this process (`krun_start_enter`).
    ///
    /// **On success this never returns**: the VM owns the process, and when
    /// the guest program exits libkrun ends the process with its exit code.
    /// Call it only in a dedicated child process (the sandbox process), never
    /// in a process that has other work to do, and never on a thread you
    /// expect to get back.
    ///
    /// If it does return, the VM did not start and the returned error says
    /// why: `ENOENT` when libkrunfw (the guest kernel, `libkrunfw.so.5`)
    /// cannot be loaded, `EINVAL` when the VM cannot be built (e.g. no usable
    /// `/dev/kvm`), or the errno of a failed `setuid`/`setgid`. libkrun logs
    /// the details to stderr. The context is consumed either way; overlay file data is leaked
    /// rather than freed, since the VM may have begun using it.
    pub fn start_enter(self) -> io::Error {
        // Not dropped: Drop would free the context and the overlay data.
        let this = ManuallyDrop::new(self);
        // SAFETY: plain integer argument; everything libkrun keeps pointers
        // to (the overlay data) is never freed past this point.
        let ret = unsafe { krun_sys::krun_start_enter(this.id) };
        // libkrun normally removed the context already; free it in case an
        // early failure left it in the map, ignoring ENOENT.
        // SAFETY: plain integer argument.
        let _ = unsafe { krun_sys::krun_free_ctx(this.id) };
        match check("krun_start_enter", ret) {
            Err(err) => err,
            Ok(()) => KrunError::new(
                "krun_start_enter",
                libc::EIO,
                Some(format!("returned {ret} without starting the VM")),
            )
            .into(),
        }
    }
}

impl Drop for KrunContext {
    fn drop(&mut self) {
        // SAFETY: plain integer argument; libkrun drops the configuration,
        // and with it its pointers into overlay_data, before this returns.
        let ret = unsafe { krun_sys::krun_free_ctx(self.id) };
        if let Err(err) = check("krun_free_ctx", ret) {
            tracing::warn!(ctx_id = self.id, error = %err, "failed to free libkrun context");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::krun::{feature, has_feature};

    const NO_ENV: &[(&str, &str)] = &[];

    fn errno_of(result: io::Result<()>) -> (&'static str, i32, io::ErrorKind) {
        let err = result.expect_err("call should fail");
        let krun = KrunError::from_io(&err).expect("a KrunError inside");
        (krun.call, krun.errno, err.kind())
    }

    fn ctx() -> KrunContext {
        KrunContext::new().expect("krun_create_ctx")
    }

    #[test]
    fn full_configuration_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();

        let mut ctx = ctx();
        ctx.set_vm_config(2, 512).unwrap();
        ctx.set_root(&root).unwrap();
        ctx.add_virtiofs("shared", &shared).unwrap();
        ctx.add_virtiofs_with(
            "ro",
            &shared,
            VirtiofsOptions {
                shm_size: 1 << 27,
                read_only: true,
            },
        )
        .unwrap();
        ctx.set_exec(
            "/bin/sh",
            &["-c", "echo hi there"],
            &[("PATH", "/bin:/usr/bin"), ("A", "b c")],
        )
        .unwrap();
        ctx.set_env(&[("HOME", "/root"), ("TERM", "dumb")]).unwrap();
        let owned: Vec<(String, String)> = vec![("EMPTY".into(), String::new())];
        ctx.set_env(&owned).unwrap();
        ctx.set_workdir("/tmp").unwrap();
        ctx.add_vsock_port(1024, &dir.path().join("agent.sock"))
            .unwrap();
        ctx.add_vsock_port2(1025, &dir.path().join("listen.sock"), true)
            .unwrap();
        ctx.set_console_output(&dir.path().join("console.log"))
            .unwrap();
        ctx.set_port_map(&[(8080, 80), (8443, 443)]).unwrap();
        ctx.set_port_map_raw(&["9000:90"]).unwrap();
        ctx.set_rlimits(&[
            Rlimit::new(libc::RLIMIT_NOFILE, 1024, 4096),
            Rlimit::new(libc::RLIMIT_NPROC, Rlimit::INFINITY, Rlimit::INFINITY),
        ])
        .unwrap();
        ctx.set_rlimits(&[]).unwrap();
        ctx.fs_add_overlay_dir(ROOT_FS_TAG, "etc", 0o755).unwrap();
        ctx.fs_add_overlay_file(ROOT_FS_TAG, "etc/hostname", b"sandbox\n", 0o644, false)
            .unwrap();
        ctx.fs_add_overlay_file(ROOT_FS_TAG, "/secret", b"s3cret", 0o600, true)
            .unwrap();
        ctx.fs_add_overlay_file("shared", "empty", b"", 0o644, false)
            .unwrap();
        ctx.set_smbios_oem_strings(&["msb:worker-1"]).unwrap();
        ctx.set_nested_virt(false).unwrap();
        ctx.split_irqchip(false).unwrap();
        ctx.setuid(nix::unistd::getuid().as_raw()).unwrap();
        ctx.setgid(nix::unistd::getgid().as_raw()).unwrap();
        ctx.disable_implicit_console().unwrap();
        assert_eq!(ctx.overlay_data.len(), 3);
    }

    #[test]
    fn rlimit_format_matches_libkrun_init() {
        assert_eq!(Rlimit::new(7, 1024, 4096).to_krun_string(), "7=1024:4096");
        assert_eq!(
            Rlimit::new(6, Rlimit::INFINITY, Rlimit::INFINITY).to_krun_string(),
            "6=18446744073709551615:18446744073709551615"
        );
        let mut ctx = ctx();
        assert_eq!(
            errno_of(ctx.set_rlimits(&[Rlimit::new(7, 10, 5)])),
            (
                "krun_set_rlimits",
                libc::EINVAL,
                io::ErrorKind::InvalidInput
            )
        );
    }

    #[test]
    fn zero_vcpus_or_memory_is_einval() {
        let mut ctx = ctx();
        let err = ctx.set_vm_config(0, 256).unwrap_err();
        assert_eq!(
            err.to_string(),
            "krun_set_vm_config failed: Invalid argument (os error 22)"
        );
        assert_eq!(
            errno_of(ctx.set_vm_config(0, 256)),
            (
                "krun_set_vm_config",
                libc::EINVAL,
                io::ErrorKind::InvalidInput
            )
        );
        assert_eq!(errno_of(ctx.set_vm_config(1, 0)).1, libc::EINVAL);
        ctx.set_vm_config(u8::MAX, 1).unwrap();
    }

    #[test]
    fn missing_root_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let mut ctx = ctx();
        let err = ctx.set_root(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let krun = KrunError::from_io(&err).unwrap();
        assert_eq!((krun.call, krun.errno), ("krun_set_root", libc::ENOENT));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert_eq!(
            errno_of(ctx.add_virtiofs("data", &missing)),
            ("krun_add_virtiofs", libc::ENOENT, io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn root_that_is_a_file_is_not_a_directory() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut ctx = ctx();
        let err = ctx.set_root(file.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("krun_set_root failed: Not a directory"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&file.path().display().to_string()),
            "{err}"
        );
        assert_eq!(
            errno_of(ctx.set_root(file.path())),
            ("krun_set_root", libc::ENOTDIR, io::ErrorKind::NotADirectory)
        );
        assert_eq!(
            errno_of(ctx.add_virtiofs("data", file.path())).1,
            libc::ENOTDIR
        );
    }

    #[test]
    fn bad_port_maps_are_einval() {
        let mut ctx = ctx();
        for bad in [
            &["80"][..],
            &["a:b"],
            &["8080:80", "8081:80"],
            &["8080:80", "8080:81"],
            &["70000:80"],
            &["80:70000"],
            &["1:2:3"],
            &[""],
        ] {
            assert_eq!(
                errno_of(ctx.set_port_map_raw(bad)),
                (
                    "krun_set_port_map",
                    libc::EINVAL,
                    io::ErrorKind::InvalidInput
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            errno_of(ctx.set_port_map(&[(1, 80), (2, 80)])).1,
            libc::EINVAL
        );
        ctx.set_port_map(&[]).unwrap();
    }

    #[test]
    fn interior_nul_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = ctx();
        let cases: Vec<(io::Result<()>, &str)> = vec![
            (
                ctx.set_exec("/bin/\0sh", &[] as &[&str], NO_ENV),
                "krun_set_exec",
            ),
            (ctx.set_exec("/bin/sh", &["a\0b"], NO_ENV), "krun_set_exec"),
            (
                ctx.set_exec("/bin/sh", &[] as &[&str], &[("A", "\0")]),
                "krun_set_exec",
            ),
            (ctx.set_env(&[("A", "x\0")]), "krun_set_env"),
            (ctx.set_workdir("/t\0mp"), "krun_set_workdir"),
            (ctx.set_root(&dir.path().join("a\0b")), "krun_set_root"),
            (ctx.add_virtiofs("t\0g", dir.path()), "krun_add_virtiofs"),
            (ctx.set_port_map_raw(&["80\0:80"]), "krun_set_port_map"),
            (
                ctx.fs_add_overlay_file(ROOT_FS_TAG, "a\0", b"", 0o644, false),
                "krun_fs_add_overlay_file",
            ),
            (
                ctx.set_console_output(Path::new("/tmp/\0")),
                "krun_set_console_output",
            ),
        ];
        for (result, call) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            let krun = KrunError::from_io(&err).unwrap();
            assert_eq!((krun.call, krun.errno), (call, libc::EINVAL));
            assert!(err.to_string().contains("NUL"), "{err}");
        }
    }

    #[test]
    fn kernel_cmdline_breaking_strings_are_rejected() {
        let mut ctx = ctx();
        for result in [
            ctx.set_exec("/bin/my sh", &[] as &[&str], NO_ENV),
            ctx.set_exec("/bin/sh", &["say \"hi\""], NO_ENV),
            ctx.set_exec("/bin/sh", &[] as &[&str], &[("A", "\"")]),
            ctx.set_exec("/bin/sh", &[] as &[&str], &[("A=B", "c")]),
            ctx.set_env(&[("", "value")]),
            ctx.set_env(&[("net.ipv4", "1")]),
            ctx.set_workdir("/my dir"),
        ] {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert_eq!(KrunError::from_io(&err).unwrap().errno, libc::EINVAL);
        }
    }

    #[test]
    fn virtiofs_tags_and_socket_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = ctx();
        let tag = "t".repeat(VIRTIOFS_TAG_MAX);
        ctx.add_virtiofs(&tag, dir.path()).unwrap();
        let long = "t".repeat(VIRTIOFS_TAG_MAX + 1);
        assert_eq!(
            errno_of(ctx.add_virtiofs(&long, dir.path())),
            (
                "krun_add_virtiofs",
                libc::EINVAL,
                io::ErrorKind::InvalidInput
            )
        );
        assert_eq!(
            errno_of(ctx.add_virtiofs_with("", dir.path(), VirtiofsOptions::default())),
            (
                "krun_add_virtiofs3",
                libc::EINVAL,
                io::ErrorKind::InvalidInput
            )
        );
        let sock = Path::new("/").join("s".repeat(UNIX_PATH_MAX));
        // (io::ErrorKind::InvalidFilename is newer than the crate's MSRV.)
        let (call, errno, _) = errno_of(ctx.add_vsock_port(1, &sock));
        assert_eq!((call, errno), ("krun_add_vsock_port", libc::ENAMETOOLONG));
        assert_eq!(
            errno_of(ctx.add_vsock_port2(1, &sock, true)).1,
            libc::ENAMETOOLONG
        );
        ctx.add_vsock_port(1, &Path::new("/").join("s".repeat(UNIX_PATH_MAX - 1)))
            .unwrap();
    }

    #[test]
    fn libkrun_errors_keep_their_errno() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = ctx();
        // Overlay on a tag that no virtio-fs device has.
        assert_eq!(
            errno_of(ctx.fs_add_overlay_file("nope", "x", b"x", 0o644, false)),
            (
                "krun_fs_add_overlay_file",
                libc::ENOENT,
                io::ErrorKind::NotFound
            )
        );
        ctx.set_root(dir.path()).unwrap();
        // Overlay below a parent that does not exist, or is a file.
        assert_eq!(
            errno_of(ctx.fs_add_overlay_file(ROOT_FS_TAG, "a/b", b"", 0o644, false)).1,
            libc::ENOENT
        );
        ctx.fs_add_overlay_file(ROOT_FS_TAG, "f", b"", 0o644, false)
            .unwrap();
        assert_eq!(
            errno_of(ctx.fs_add_overlay_dir(ROOT_FS_TAG, "f/g", 0o755)).1,
            libc::ENOTDIR
        );
        // A listening vsock port on a path that exists.
        let existing = dir.path().join("exists");
        std::fs::write(&existing, b"").unwrap();
        assert_eq!(
            errno_of(ctx.add_vsock_port2(1, &existing, true)),
            (
                "krun_add_vsock_port2",
                libc::EEXIST,
                io::ErrorKind::AlreadyExists
            )
        );
        // Console output can be set only once.
        ctx.set_console_output(&dir.path().join("c")).unwrap();
        assert_eq!(
            errno_of(ctx.set_console_output(&dir.path().join("c"))).1,
            libc::EINVAL
        );
        // With vsock disabled, ports and port maps need a device first.
        ctx.disable_implicit_vsock().unwrap();
        // ENODEV has no stable io::ErrorKind of its own; the errno tells.
        let (call, errno, _) = errno_of(ctx.set_port_map(&[(8080, 80)]));
        assert_eq!((call, errno), ("krun_set_port_map", libc::ENODEV));
        assert_eq!(
            errno_of(ctx.add_vsock_port(2, &dir.path().join("s"))).1,
            libc::ENODEV
        );
        assert_eq!(errno_of(ctx.add_vsock(1 << 7)).1, libc::EINVAL);
        ctx.add_vsock(1).unwrap();
        assert_eq!(errno_of(ctx.add_vsock(0)).1, libc::EEXIST);
        ctx.set_port_map(&[(8080, 80)]).unwrap();
    }

    #[test]
    fn kernel_and_firmware_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vmlinux");
        let mut ctx = ctx();
        assert_eq!(
            errno_of(ctx.set_kernel(&missing, KernelFormat::Elf, None, Some("quiet"))),
            ("krun_set_kernel", libc::ENOENT, io::ErrorKind::NotFound)
        );
        assert_eq!(
            errno_of(ctx.set_firmware(&missing)),
            ("krun_set_firmware", libc::ENOENT, io::ErrorKind::NotFound)
        );
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        assert_eq!(
            errno_of(ctx.set_kernel(&kernel, KernelFormat::Elf, Some(&missing), None)).1,
            libc::ENOENT
        );
        assert_eq!(
            errno_of(ctx.set_kernel(dir.path(), KernelFormat::Elf, None, None)).1,
            libc::EINVAL
        );
        // libkrun records these paths; it reads them only when the VM starts.
        ctx.set_kernel(
            &kernel,
            KernelFormat::ImageGz,
            Some(&kernel),
            Some("console=hvc0"),
        )
        .unwrap();
        ctx.set_firmware(&kernel).unwrap();
    }

    #[test]
    fn oversized_arrays_are_e2big() {
        let mut ctx = ctx();
        let many: Vec<String> = (0..4096).map(|i| format!("{}:{}", i + 1, i + 1)).collect();
        assert_eq!(
            errno_of(ctx.set_port_map_raw(&many)),
            (
                "krun_set_port_map",
                libc::E2BIG,
                io::ErrorKind::ArgumentListTooLong
            )
        );
        ctx.set_port_map_raw(&many[..4095]).unwrap();
        ctx.set_smbios_oem_strings(&[] as &[&str]).unwrap();
    }

    #[test]
    fn freed_context_id_is_enoent() {
        let id = ctx().id();
        // The KrunContext above was dropped, which freed its id.
        let mut stale = KrunContext::from_raw_id(id);
        assert_eq!(
            errno_of(stale.set_vm_config(1, 128)),
            ("krun_set_vm_config", libc::ENOENT, io::ErrorKind::NotFound)
        );
        assert_eq!(errno_of(stale.set_workdir("/")).1, libc::ENOENT);
        assert_eq!(errno_of(stale.set_port_map(&[(1, 2)])).1, libc::ENOENT);
        // Dropping `stale` logs a warning (ENOENT) instead of panicking.
        drop(stale);
    }

    #[test]
    fn thousand_contexts_create_and_drop() {
        let mut ids = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut ctx = ctx();
            ctx.set_vm_config(1, 128).unwrap();
            assert!(ids.insert(ctx.id()), "ids are never reused");
        }
        let held: Vec<KrunContext> = (0..1000).map(|_| ctx()).collect();
        assert_eq!(
            held.iter()
                .map(KrunContext::id)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            1000
        );
    }

    #[test]
    fn free_functions() {
        assert!(has_feature(feature::NET).is_ok());
        assert_eq!(
            KrunError::from_io(&has_feature(999).unwrap_err()).map(|e| e.errno),
            Some(libc::EINVAL)
        );
        assert!(crate::krun::check_nested_virt().is_ok());
        // max_vcpus needs /dev/kvm; without it libkrun answers EINVAL.
        match crate::krun::max_vcpus() {
            Ok(n) => assert!(n >= 1),
            Err(err) => assert_eq!(KrunError::from_io(&err).unwrap().errno, libc::EINVAL),
        }
    }

    #[test]
    fn contexts_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<KrunContext>();
        let mut ctx = ctx();
        std::thread::spawn(move || ctx.set_vm_config(1, 64))
            .join()
            .unwrap()
            .unwrap();
    }
}
