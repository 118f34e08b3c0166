//! Links against the real libkrun and calls into it.
//!
//! These tests need the libkrun found by the build script (normally the
//! prefix of `cargo xtask setup`); they never start a VM.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_void};

use krun_sys as k;

/// The libkrun header the bindings were generated from.
const HEADER: &str = include_str!("../include/libkrun.h");

/// Creates a context, asserting success.
fn create_ctx() -> u32 {
    // SAFETY: krun_create_ctx takes no arguments and only allocates a context.
    let ctx = unsafe { k::krun_create_ctx() };
    assert!(ctx >= 0, "krun_create_ctx failed: {ctx}");
    u32::try_from(ctx).expect("non-negative context id")
}

#[test]
fn create_and_free_ctx() {
    let ctx = create_ctx();
    // SAFETY: `ctx` was returned by krun_create_ctx and is freed only here.
    assert_eq!(unsafe { k::krun_free_ctx(ctx) }, 0);
    // SAFETY: freeing an id that no longer exists is an error, not UB.
    assert_eq!(unsafe { k::krun_free_ctx(ctx) }, -libc::ENOENT);
}

#[test]
fn free_bogus_ctx_fails() {
    // SAFETY: an unknown context id is reported as an error.
    let ret = unsafe { k::krun_free_ctx(u32::MAX - 7) };
    assert!(ret < 0, "expected a negative errno, got {ret}");
    assert_eq!(ret, -libc::ENOENT);
}

#[test]
fn configure_ctx() {
    let ctx = create_ctx();
    // SAFETY: `ctx` is a live context; the arguments are plain integers.
    assert_eq!(unsafe { k::krun_set_vm_config(ctx, 1, 256) }, 0);
    // SAFETY: an unknown context id is reported as an error.
    let ret = unsafe { k::krun_set_vm_config(u32::MAX - 7, 1, 256) };
    assert_eq!(ret, -libc::ENOENT);

    let workdir = CString::new("/").unwrap();
    // SAFETY: `ctx` is live and `workdir` a NUL-terminated string that outlives the call.
    assert_eq!(unsafe { k::krun_set_workdir(ctx, workdir.as_ptr()) }, 0);

    let env = [CString::new("A=1").unwrap(), CString::new("B=2").unwrap()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: `envp` is a NULL-terminated array of valid C strings, alive during the call.
    assert_eq!(unsafe { k::krun_set_env(ctx, envp.as_ptr()) }, 0);

    // Obsolete API: always -EINVAL.
    let none: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: `ctx` is live and `none` a NULL-terminated (empty) array.
    let ret = unsafe { k::krun_set_mapped_volumes(ctx, none.as_ptr()) };
    assert_eq!(ret, -libc::EINVAL);

    // SAFETY: `ctx` was returned by krun_create_ctx and is freed only here.
    assert_eq!(unsafe { k::krun_free_ctx(ctx) }, 0);
}

#[test]
fn has_feature() {
    // SAFETY: krun_has_feature only inspects its integer argument.
    let has = |f: u64| unsafe { k::krun_has_feature(f) };
    // The project builds libkrun with its default features, "init-blob" among them.
    assert_eq!(has(k::KRUN_FEATURE_INIT_BLOB), 1);
    for f in k::KRUN_FEATURE_NET..=k::KRUN_FEATURE_INIT_BLOB {
        let r = has(f);
        assert!(r == 0 || r == 1, "krun_has_feature({f}) = {r}");
    }
    assert_eq!(has(k::KRUN_FEATURE_INIT_BLOB + 1000), -libc::EINVAL);
}

#[test]
fn default_init_blob() {
    let mut data: *const u8 = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: both out-pointers point to live locals of the right types.
    let ret = unsafe { k::krun_get_default_init(&mut data, &mut len) };
    assert_eq!(ret, 0);
    assert!(!data.is_null() && len > 0);
}

#[test]
fn max_vcpus() {
    // SAFETY: krun_get_max_vcpus takes no arguments.
    let n = unsafe { k::krun_get_max_vcpus() };
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm_usable {
        assert!(
            n > 0,
            "krun_get_max_vcpus = {n} although /dev/kvm is usable"
        );
    } else {
        assert!(n < 0, "krun_get_max_vcpus = {n} without /dev/kvm");
    }
}

/// Functions declared in the header, each with the build feature the header
/// says provides it (`None`: present in every build).
fn declared_functions() -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut comment = String::new();
    let mut in_comment = false;
    for line in HEADER.lines() {
        let t = line.trim();
        if in_comment || t.starts_with("/*") {
            in_comment = !t.contains("*/");
            comment.push_str(t);
            comment.push('\n');
            continue;
        }
        let Some(i) = t.find("krun_") else { continue };
        let is_decl = t.starts_with("int") && t[i..].contains('(');
        if !is_decl {
            continue;
        }
        let name: String = t[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let gate = comment.split_once("Feature-gated:").map(|(_, rest)| {
            // `... builds with feature "blk".` or `... builds for macOS ...`.
            rest.split('"').nth(1).unwrap_or("macos-aarch64").to_owned()
        });
        out.insert(name, gate);
        comment.clear();
    }
    out
}

/// Path of the libkrun the test binary is linked against.
fn loaded_libkrun_path() -> CString {
    // SAFETY: Dl_info is a plain C struct for which all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = k::krun_create_ctx as *const c_void;
    // SAFETY: `addr` is the address of a function in libkrun; `info` is a live out-parameter.
    let ok = unsafe { libc::dladdr(addr, &mut info) };
    assert_ne!(ok, 0, "dladdr failed for krun_create_ctx");
    assert!(!info.dli_fname.is_null());
    // SAFETY: dladdr succeeded, so dli_fname is a NUL-terminated path owned by the loader.
    unsafe { CStr::from_ptr(info.dli_fname) }.to_owned()
}

#[test]
fn header_functions_resolve() {
    let declared = declared_functions();
    assert!(
        declared.len() >= 60,
        "parsed only {} functions",
        declared.len()
    );
    assert!(declared.contains_key("krun_start_enter"));
    assert_eq!(declared["krun_add_disk"].as_deref(), Some("blk"));
    assert_eq!(declared["krun_add_net_tap"].as_deref(), Some("net"));
    assert_eq!(declared["krun_set_tee_config_file"].as_deref(), Some("tee"));
    assert!(declared["krun_get_shutdown_eventfd"].is_some());

    let path = loaded_libkrun_path();
    let path_str = path.to_string_lossy().into_owned();
    assert!(
        path_str.contains("libkrun.so"),
        "unexpected library {path_str}"
    );
    // SAFETY: `path` is a valid C string naming an already loaded library.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!handle.is_null(), "dlopen({path_str}) failed");

    let feature_id = |gate: &str| match gate {
        "blk" => Some(k::KRUN_FEATURE_BLK),
        "net" => Some(k::KRUN_FEATURE_NET),
        "tee" => Some(k::KRUN_FEATURE_TEE),
        _ => None,
    };

    let mut unresolved_ungated = Vec::new();
    let mut resolved = 0;
    for (name, gate) in &declared {
        let cname = CString::new(name.as_str()).unwrap();
        // SAFETY: `handle` is a live dlopen handle and `cname` a valid C string.
        let sym = unsafe { libc::dlsym(handle, cname.as_ptr()) };
        match (sym.is_null(), gate) {
            (false, _) => resolved += 1,
            (true, None) => unresolved_ungated.push(name.clone()),
            (true, Some(gate)) => {
                // A gated function may only be missing when the build lacks its feature.
                if let Some(f) = feature_id(gate) {
                    // SAFETY: krun_has_feature only inspects its integer argument.
                    let has = unsafe { k::krun_has_feature(f) };
                    assert_eq!(has, 0, "{name} is missing although feature {gate} is built");
                }
            }
        }
    }
    // SAFETY: `handle` came from dlopen above and is closed once.
    unsafe { libc::dlclose(handle) };

    assert!(
        unresolved_ungated.is_empty(),
        "{path_str} does not export these functions the header declares without a \
         feature gate: {unresolved_ungated:?}"
    );
    assert!(resolved >= 50, "only {resolved} functions resolved");
}
