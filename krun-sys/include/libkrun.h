/*
 * libkrun.h — C declarations for the libkrun C API, written by the
 * microsandbox project for libkrun 1.19.7.
 *
 * This header is the project's own: it was written by hand from the
 * `#[no_mangle] extern "C" fn krun_*` signatures in libkrun 1.19.7's
 * `src/lib.rs` (and the constants in it and in the krun-* crates it uses).
 * `cargo xtask bindgen` turns it into `krun-sys/src/bindings.rs` and checks
 * that every `krun_*` function of that source is declared here.
 *
 * Where a function has several signatures depending on libkrun's build
 * features, the one of the default build (features = ["init-blob"]) is used.
 * Functions that only exist in builds with extra features are still declared;
 * their comments say "Feature-gated:" and name the feature that provides them.
 *
 * Unless a comment says otherwise, every function returns 0 on success or a
 * negative errno value (e.g. -ENOENT for an unknown context id, -EINVAL for a
 * bad argument) on failure.
 */

#ifndef MICROSANDBOX_LIBKRUN_H
#define MICROSANDBOX_LIBKRUN_H

#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Constants                                                                 */
/* ------------------------------------------------------------------------ */

/* Log levels for krun_set_log_level() and krun_init_log(); any value above
 * KRUN_LOG_LEVEL_DEBUG means "trace". */
#define KRUN_LOG_LEVEL_OFF 0
#define KRUN_LOG_LEVEL_ERROR 1
#define KRUN_LOG_LEVEL_WARN 2
#define KRUN_LOG_LEVEL_INFO 3
#define KRUN_LOG_LEVEL_DEBUG 4
#define KRUN_LOG_LEVEL_TRACE 5

/* Special log target for krun_init_log(): libkrun's default (stderr). */
#define KRUN_LOG_TARGET_DEFAULT -1

/* Log styles (colouring) for krun_init_log(). */
#define KRUN_LOG_STYLE_AUTO 0
#define KRUN_LOG_STYLE_ALWAYS 1
#define KRUN_LOG_STYLE_NEVER 2

/* Options for krun_init_log(): ignore the RUST_LOG/RUST_LOG_STYLE environment. */
#define KRUN_LOG_OPTION_NO_ENV 1

/* Kernel image formats for krun_set_kernel(). */
#define KRUN_KERNEL_FORMAT_RAW 0
#define KRUN_KERNEL_FORMAT_ELF 1
#define KRUN_KERNEL_FORMAT_PE_GZ 2
#define KRUN_KERNEL_FORMAT_IMAGE_BZ2 3
#define KRUN_KERNEL_FORMAT_IMAGE_GZ 4
#define KRUN_KERNEL_FORMAT_IMAGE_ZSTD 5

/* Disk image formats for krun_add_disk2() / krun_add_disk3() (feature "blk"). */
#define KRUN_DISK_FORMAT_RAW 0
#define KRUN_DISK_FORMAT_QCOW2 1
#define KRUN_DISK_FORMAT_VMDK 2

/* Sync modes for krun_add_disk3() (feature "blk"). */
#define KRUN_SYNC_NONE 0
#define KRUN_SYNC_RELAXED 1
#define KRUN_SYNC_FULL 2

/* Permission semantics of a virtio-fs device, for krun_add_virtiofs4().
 * LINUX_COMPLETE: as close as possible to Linux file system semantics.
 * LINUX_SIMPLIFIED: no xattrs or idmaps, ownership taken from the calling
 * guest process, permission bits stored on the host. */
#define KRUN_FS_SEMANTICS_LINUX_COMPLETE 0
#define KRUN_FS_SEMANTICS_LINUX_SIMPLIFIED 1

/* Flags for the krun_add_net_*() functions (feature "net"). */
#define NET_FLAG_VFKIT (1 << 0)
#define NET_FLAG_DHCP_CLIENT (1 << 1)

/* virtio-net feature bits for the krun_add_net_*() functions (feature "net"). */
#define NET_FEATURE_CSUM (1 << 0)
#define NET_FEATURE_GUEST_CSUM (1 << 1)
#define NET_FEATURE_GUEST_TSO4 (1 << 7)
#define NET_FEATURE_GUEST_TSO6 (1 << 8)
#define NET_FEATURE_GUEST_UFO (1 << 10)
#define NET_FEATURE_HOST_TSO4 (1 << 11)
#define NET_FEATURE_HOST_TSO6 (1 << 12)
#define NET_FEATURE_HOST_UFO (1 << 14)

/* TSI (transparent socket impersonation) features for krun_add_vsock(). */
#define KRUN_TSI_HIJACK_INET (1 << 0) /* hijack AF_INET and AF_INET6 sockets */
#define KRUN_TSI_HIJACK_UNIX (1 << 1) /* hijack AF_UNIX sockets */

/* Build features that krun_has_feature() can be asked about. */
#define KRUN_FEATURE_NET 0
#define KRUN_FEATURE_BLK 1
#define KRUN_FEATURE_GPU 2
#define KRUN_FEATURE_SND 3
#define KRUN_FEATURE_INPUT 4
#define KRUN_FEATURE_EFI 5
#define KRUN_FEATURE_TEE 6
#define KRUN_FEATURE_AMD_SEV 7
#define KRUN_FEATURE_INTEL_TDX 8
#define KRUN_FEATURE_AWS_NITRO 9
#define KRUN_FEATURE_VIRGL_RESOURCE_MAP2 10
#define KRUN_FEATURE_INIT_BLOB 11

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */
/* ------------------------------------------------------------------------ */

/**
 * Initializes libkrun's logger at `level` (KRUN_LOG_LEVEL_*), honouring
 * RUST_LOG. May be called at most once per process. Returns 0.
 */
int32_t krun_set_log_level(uint32_t level);

/**
 * Initializes libkrun's logger. `target_fd` is the file descriptor to log to
 * (KRUN_LOG_TARGET_DEFAULT, 1 for stdout, 2 for stderr or any other open fd,
 * whose ownership passes to libkrun; 0 is rejected), `level` a
 * KRUN_LOG_LEVEL_*, `style` a KRUN_LOG_STYLE_* and `options` 0 or
 * KRUN_LOG_OPTION_NO_ENV. May be called at most once per process.
 * Returns 0 or a negative errno.
 */
int32_t krun_init_log(int target_fd, uint32_t level, uint32_t style, uint32_t options);

/* ------------------------------------------------------------------------ */
/* Contexts and VM configuration                                             */
/* ------------------------------------------------------------------------ */

/**
 * Creates a configuration context. Returns the (non-negative) context id
 * used by every other call, or a negative errno.
 */
int32_t krun_create_ctx(void);

/**
 * Frees the configuration context `ctx_id`. Returns 0, or -ENOENT when no
 * such context exists.
 */
int32_t krun_free_ctx(uint32_t ctx_id);

/**
 * Sets the number of vCPUs and the amount of RAM (in MiB) of the VM.
 * Returns 0 or a negative errno.
 */
int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib);

/**
 * Enables or disables nested virtualization for the VM.
 * Returns 0 or a negative errno.
 */
int32_t krun_set_nested_virt(uint32_t ctx_id, bool enabled);

/**
 * Checks whether the host supports nested virtualization.
 * Returns 1 if supported, 0 if not, or a negative errno.
 */
int32_t krun_check_nested_virt(void);

/**
 * Asks whether this libkrun build has `feature` (a KRUN_FEATURE_*).
 * Returns 1 if it does, 0 if it does not, or a negative errno (-EINVAL for an
 * unknown feature).
 */
int krun_has_feature(uint64_t feature);

/**
 * Returns the maximum number of vCPUs the hypervisor supports, or a negative
 * errno.
 */
int32_t krun_get_max_vcpus(void);

/**
 * Enables or disables the split IRQ chip (x86_64 only; enabling it elsewhere
 * fails with -EINVAL). Returns 0 or a negative errno.
 */
int32_t krun_split_irqchip(uint32_t ctx_id, bool enable);

/**
 * Sets the SMBIOS OEM strings of the VM from the NULL-terminated array
 * `oem_strings`. Returns 0 or a negative errno.
 */
int32_t krun_set_smbios_oem_strings(uint32_t ctx_id, const char *const *oem_strings);

/**
 * Sets the user id the VMM process switches to before starting the VM.
 * Returns 0 or a negative errno.
 */
int32_t krun_setuid(uint32_t ctx_id, uid_t uid);

/**
 * Sets the group id the VMM process switches to before starting the VM.
 * Returns 0 or a negative errno.
 */
int32_t krun_setgid(uint32_t ctx_id, gid_t gid);

/* ------------------------------------------------------------------------ */
/* Kernel, firmware and init                                                 */
/* ------------------------------------------------------------------------ */

/**
 * Uses an external kernel instead of libkrunfw's. `kernel_format` is a
 * KRUN_KERNEL_FORMAT_*; `initramfs` and `cmdline` may be NULL.
 * Returns 0 or a negative errno.
 * (In builds with feature "tee" this function takes only ctx_id and the
 * kernel path; this is the default build's signature.)
 */
int32_t krun_set_kernel(uint32_t ctx_id, const char *kernel_path, uint32_t kernel_format,
                        const char *initramfs, const char *cmdline);

/**
 * Sets the firmware image the VM boots. Returns 0 or a negative errno.
 */
int32_t krun_set_firmware(uint32_t ctx_id, const char *firmware_path);

/**
 * Stops libkrun from injecting its built-in init (/init.krun) into the root
 * virtio-fs device. Returns 0 or a negative errno.
 */
int32_t krun_disable_implicit_init(uint32_t ctx_id);

/**
 * Gets libkrun's built-in init binary: stores a pointer to it in `*data_out`
 * and its length in `*len_out`. Returns 0 or a negative errno (-ENOTSUP in
 * builds without feature "init-blob").
 */
int32_t krun_get_default_init(const uint8_t **data_out, size_t *len_out);

/* ------------------------------------------------------------------------ */
/* Root file system and virtio-fs                                            */
/* ------------------------------------------------------------------------ */

/**
 * Uses the host directory `root_path` as the guest's root file system
 * (a virtio-fs device tagged "/dev/root"). Returns 0 or a negative errno.
 */
int32_t krun_set_root(uint32_t ctx_id, const char *root_path);

/**
 * Adds a virtio-fs device sharing host directory `path` under tag `tag`.
 * Returns 0 or a negative errno.
 */
int32_t krun_add_virtiofs(uint32_t ctx_id, const char *tag, const char *path);

/**
 * As krun_add_virtiofs(), with a DAX shared memory window of `shm_size`
 * bytes (0: none). Returns 0 or a negative errno.
 */
int32_t krun_add_virtiofs2(uint32_t ctx_id, const char *tag, const char *path, uint64_t shm_size);

/**
 * As krun_add_virtiofs2(), optionally read-only. Returns 0 or a negative errno.
 */
int32_t krun_add_virtiofs3(uint32_t ctx_id, const char *tag, const char *path, uint64_t shm_size,
                           bool read_only);

/**
 * As krun_add_virtiofs3(), with permission `semantics` (a
 * KRUN_FS_SEMANTICS_*). A NULL `path` creates a virtual-only file system
 * with no host directory. Returns 0 or a negative errno.
 */
int32_t krun_add_virtiofs4(uint32_t ctx_id, const char *tag, const char *path, uint64_t shm_size,
                           bool read_only, uint32_t semantics);

/**
 * Obsolete: mapped volumes are no longer supported. Always returns -EINVAL.
 */
int32_t krun_set_mapped_volumes(uint32_t ctx_id, const char *const *mapped_volumes);

/**
 * Adds a virtual file at `path` (relative, '/'-separated; parent directories
 * must exist) to the virtio-fs device tagged `fs_tag`, with contents
 * `data[0..data_len]` and permission bits `mode`; when `one_shot` is true the
 * file disappears after it has been read once. `data` must stay valid for as
 * long as the VM runs. Returns 0 or a negative errno.
 */
int32_t krun_fs_add_overlay_file(uint32_t ctx_id, const char *fs_tag, const char *path,
                                 const uint8_t *data, size_t data_len, uint32_t mode,
                                 bool one_shot);

/**
 * Adds a virtual directory at `path` with permission bits `mode` to the
 * virtio-fs device tagged `fs_tag`. Returns 0 or a negative errno.
 */
int32_t krun_fs_add_overlay_dir(uint32_t ctx_id, const char *fs_tag, const char *path,
                                uint32_t mode);

/* ------------------------------------------------------------------------ */
/* Block devices (feature "blk")                                             */
/* ------------------------------------------------------------------------ */

/**
 * Adds a raw disk image as a virtio-blk device named `block_id`.
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "blk".
 */
int32_t krun_add_disk(uint32_t ctx_id, const char *block_id, const char *disk_path, bool read_only);

/**
 * As krun_add_disk(), with a disk format (KRUN_DISK_FORMAT_*).
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "blk".
 */
int32_t krun_add_disk2(uint32_t ctx_id, const char *block_id, const char *disk_path,
                       uint32_t disk_format, bool read_only);

/**
 * As krun_add_disk2(), with direct I/O and a sync mode (KRUN_SYNC_*).
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "blk".
 */
int32_t krun_add_disk3(uint32_t ctx_id, const char *block_id, const char *disk_path,
                       uint32_t disk_format, bool read_only, bool direct_io, uint32_t sync_mode);

/**
 * Sets the root disk image (legacy interface). Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "blk".
 */
int32_t krun_set_root_disk(uint32_t ctx_id, const char *disk_path);

/**
 * Sets the data disk image (legacy interface). Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "blk".
 */
int32_t krun_set_data_disk(uint32_t ctx_id, const char *disk_path);

/**
 * Boots from block device `device` (file system type `fstype` and mount
 * `options` may be NULL) instead of a virtio-fs root.
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "blk".
 */
int32_t krun_set_root_disk_remount(uint32_t ctx_id, const char *device, const char *fstype,
                                   const char *options);

/* ------------------------------------------------------------------------ */
/* Networking (feature "net")                                                */
/* ------------------------------------------------------------------------ */

/**
 * Adds a virtio-net device backed by a stream-oriented unix socket, given
 * by `path` or by an already connected `fd` (-1 when unused); `mac` points to
 * 6 bytes, `features` is a set of NET_FEATURE_*, `flags` of NET_FLAG_*.
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "net".
 */
int32_t krun_add_net_unixstream(uint32_t ctx_id, const char *path, int fd, const uint8_t *mac,
                                uint32_t features, uint32_t flags);

/**
 * As krun_add_net_unixstream(), for a datagram-oriented unix socket.
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "net".
 */
int32_t krun_add_net_unixgram(uint32_t ctx_id, const char *path, int fd, const uint8_t *mac,
                              uint32_t features, uint32_t flags);

/**
 * Adds a virtio-net device backed by the TAP interface `tap_name` (Linux).
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "net".
 */
int32_t krun_add_net_tap(uint32_t ctx_id, const char *tap_name, const uint8_t *mac,
                         uint32_t features, uint32_t flags);

/**
 * Uses the passt instance connected to `fd` for networking (legacy
 * interface). Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "net".
 */
int32_t krun_set_passt_fd(uint32_t ctx_id, int fd);

/**
 * Uses the gvproxy socket at `path` for networking (legacy interface).
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "net".
 */
int32_t krun_set_gvproxy_path(uint32_t ctx_id, const char *path);

/**
 * Sets the MAC address (6 bytes) of the legacy network interface.
 * Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "net".
 */
int32_t krun_set_net_mac(uint32_t ctx_id, const uint8_t *mac);

/* ------------------------------------------------------------------------ */
/* TSI networking and vsock                                                  */
/* ------------------------------------------------------------------------ */

/**
 * Sets the TSI port map from the NULL-terminated array of "host:guest"
 * strings `port_map`. Returns 0 or a negative errno.
 */
int32_t krun_set_port_map(uint32_t ctx_id, const char *const *port_map);

/**
 * Stops libkrun from adding its implicit vsock device.
 * Returns 0 or a negative errno.
 */
int32_t krun_disable_implicit_vsock(uint32_t ctx_id);

/**
 * Adds a vsock device with TSI features `tsi_features` (KRUN_TSI_*).
 * Returns 0 or a negative errno (-EEXIST if one was already added).
 */
int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features);

/**
 * Maps vsock port `port` to the host unix socket at `filepath` (guest
 * connects, host listens). Returns 0 or a negative errno.
 */
int32_t krun_add_vsock_port(uint32_t ctx_id, uint32_t port, const char *filepath);

/**
 * As krun_add_vsock_port(); when `listen` is true libkrun listens on the unix
 * socket and the guest side listens on the vsock port.
 * Returns 0 or a negative errno.
 */
int32_t krun_add_vsock_port2(uint32_t ctx_id, uint32_t port, const char *filepath, bool listen);

/* ------------------------------------------------------------------------ */
/* Guest process                                                             */
/* ------------------------------------------------------------------------ */

/**
 * Sets resource limits for the guest from the NULL-terminated array of
 * "RESOURCE=SOFT:HARD" strings `rlimits`. Returns 0 or a negative errno.
 */
int32_t krun_set_rlimits(uint32_t ctx_id, const char *const *rlimits);

/**
 * Sets the working directory of the guest's first process.
 * Returns 0 or a negative errno.
 */
int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path);

/**
 * Sets the program the guest runs, its NULL-terminated `argv` (without
 * `argv[0]`) and `envp` ("KEY=VALUE"; NULL: inherit the host environment).
 * Returns 0 or a negative errno.
 */
int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path, const char *const *argv,
                      const char *const *envp);

/**
 * Sets the guest environment from the NULL-terminated "KEY=VALUE" array
 * `envp` (NULL: inherit the host environment). Returns 0 or a negative errno.
 */
int32_t krun_set_env(uint32_t ctx_id, const char *const *envp);

/* ------------------------------------------------------------------------ */
/* TEE (feature "tee")                                                       */
/* ------------------------------------------------------------------------ */

/**
 * Sets the TEE configuration file. Returns 0 or a negative errno.
 * Feature-gated: only exported by libkrun builds with feature "tee"
 * (enabled by "amd-sev" / "tdx").
 */
int32_t krun_set_tee_config_file(uint32_t ctx_id, const char *filepath);

/* ------------------------------------------------------------------------ */
/* GPU, display, input and sound                                             */
/* ------------------------------------------------------------------------ */

/**
 * Enables a virtio-gpu device with virglrenderer flags `virgl_flags`.
 * Returns 0 or a negative errno.
 */
int32_t krun_set_gpu_options(uint32_t ctx_id, uint32_t virgl_flags);

/**
 * As krun_set_gpu_options(), with a host shared memory window of `shm_size`
 * bytes. Returns 0 or a negative errno.
 */
int32_t krun_set_gpu_options2(uint32_t ctx_id, uint32_t virgl_flags, uint64_t shm_size);

/**
 * Passes an already opened virgl render server fd to the GPU device.
 * Returns 0 or a negative errno.
 */
int32_t krun_set_gpu_render_server_fd(uint32_t ctx_id, int32_t render_server_fd);

/**
 * Sets the display backend (a vtable of `vtable_size` bytes). In the default
 * build (no feature "gpu") this always returns -ENOTSUP; builds with "gpu"
 * export a different signature (ctx_id, vtable, vtable_size).
 */
int32_t krun_set_display_backend(uint32_t ctx_id, uint32_t features, const void *vtable,
                                 size_t vtable_size);

/**
 * Adds a display of `width` x `height` pixels. Returns the display id, or a
 * negative errno (-ENOTSUP without feature "gpu").
 */
int32_t krun_add_display(uint32_t ctx_id, uint32_t width, uint32_t height);

/**
 * Sets the refresh rate of display `display_id`. Returns 0 or a negative
 * errno (-ENOTSUP without feature "gpu").
 */
int32_t krun_display_set_refresh_rate(uint32_t ctx_id, uint32_t display_id, uint32_t refresh_rate);

/**
 * Sets the EDID blob (`size` bytes) of display `display_id`. Returns 0 or a
 * negative errno (-ENOTSUP without feature "gpu").
 */
int32_t krun_display_set_edid(uint32_t ctx_id, uint32_t display_id, const uint8_t *edid,
                              size_t size);

/**
 * Sets the physical size (millimetres) of display `display_id`. Returns 0 or
 * a negative errno (-ENOTSUP without feature "gpu").
 */
int32_t krun_display_set_physical_size(uint32_t ctx_id, uint32_t display_id, uint16_t width_mm,
                                       uint16_t height_mm);

/**
 * Sets the DPI of display `display_id`. Returns 0 or a negative errno
 * (-ENOTSUP without feature "gpu").
 */
int32_t krun_display_set_dpi(uint32_t ctx_id, uint32_t display_id, uint32_t dpi);

/**
 * Adds an input device from a config backend and an event provider backend
 * (vtables of the given sizes). Returns 0 or a negative errno (-ENOTSUP
 * without feature "input").
 */
int32_t krun_add_input_device(uint32_t ctx_id, const void *config_backend,
                              size_t config_backend_size, const void *event_provider_backend,
                              size_t event_provider_backend_size);

/**
 * Adds an input device that forwards events from the evdev fd `input_fd`.
 * Returns 0 or a negative errno (-ENOTSUP without feature "input").
 */
int32_t krun_add_input_device_fd(uint32_t ctx_id, int32_t input_fd);

/**
 * Enables or disables the virtio-snd device. Returns 0 or a negative errno.
 */
int32_t krun_set_snd_device(uint32_t ctx_id, bool enable);

/* ------------------------------------------------------------------------ */
/* Consoles                                                                  */
/* ------------------------------------------------------------------------ */

/**
 * Redirects the VM's console output to the file `filepath` instead of
 * stdout. Returns 0 or a negative errno.
 */
int32_t krun_set_console_output(uint32_t ctx_id, const char *filepath);

/**
 * Stops libkrun from adding its implicit console device.
 * Returns 0 or a negative errno.
 */
int32_t krun_disable_implicit_console(uint32_t ctx_id);

/**
 * Adds a virtio-console device using `input_fd`, `output_fd` and `err_fd`.
 * Returns 0 or a negative errno.
 */
int32_t krun_add_virtio_console_default(uint32_t ctx_id, int input_fd, int output_fd, int err_fd);

/**
 * Adds a multiport virtio-console device whose ports are added with
 * krun_add_console_port_*(). Returns its console id, or a negative errno.
 */
int32_t krun_add_virtio_console_multiport(uint32_t ctx_id);

/**
 * Adds a port named `name` backed by the TTY `tty_fd` to multiport console
 * `console_id`. Returns 0 or a negative errno.
 */
int32_t krun_add_console_port_tty(uint32_t ctx_id, uint32_t console_id, const char *name,
                                  int tty_fd);

/**
 * Adds a port named `name` reading from `input_fd` and writing to
 * `output_fd` to multiport console `console_id`. Returns 0 or a negative errno.
 */
int32_t krun_add_console_port_inout(uint32_t ctx_id, uint32_t console_id, const char *name,
                                    int input_fd, int output_fd);

/**
 * Adds a serial console using `input_fd` and `output_fd`.
 * Returns 0 or a negative errno.
 */
int32_t krun_add_serial_console_default(uint32_t ctx_id, int input_fd, int output_fd);

/**
 * Sets the console the guest kernel uses (its `console=` value, e.g. "hvc0").
 * Returns 0 or a negative errno.
 */
int32_t krun_set_kernel_console(uint32_t ctx_id, const char *console_id);

/* ------------------------------------------------------------------------ */
/* Running                                                                   */
/* ------------------------------------------------------------------------ */

/**
 * Returns an eventfd the host can write to to request a guest shutdown, or a
 * negative errno.
 * Feature-gated: only exported by libkrun builds for macOS on aarch64
 * (target_os = "macos", target_arch = "aarch64"); never on Linux.
 */
int32_t krun_get_shutdown_eventfd(uint32_t ctx_id);

/**
 * Builds the VM from context `ctx_id` and runs it in the calling process.
 * Never returns on success: the process exits when the guest does.
 * Returns a negative errno if the VM could not be started.
 */
int32_t krun_start_enter(uint32_t ctx_id);

#ifdef __cplusplus
}
#endif

#endif /* MICROSANDBOX_LIBKRUN_H */
