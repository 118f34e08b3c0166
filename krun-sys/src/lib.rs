//! Raw FFI bindings to the C API of [libkrun] 1.19.7.
//!
//! libkrun is a library that runs a process inside a lightweight KVM (or HVF)
//! virtual machine. This crate declares its `krun_*` functions and the
//! constants they take, exactly as in the project's own header
//! `krun-sys/include/libkrun.h`; the declarations in `bindings.rs` are generated
//! from that header by `cargo xtask bindgen` and checked in. There are no safe
//! wrappers here: every function is `unsafe` and follows the C conventions
//! (0 or a non-negative value on success, a negative errno on failure).
//!
//! Some functions are only exported by libkrun builds with extra build
//! features ("blk", "net", "tee", or macOS on aarch64); their header comments
//! say so. The project's libkrun is built with the default features, so
//! calling those would fail to link or resolve: ask [`krun_has_feature`] first.
//!
//! # Finding libkrun
//!
//! The build script looks for the library, in this order:
//!
//! 1. the directory named by the `LIBKRUN_DIR` environment variable, which
//!    must contain `libkrun.so`;
//! 2. `pkg-config libkrun`;
//! 3. the project prefix maintained by `cargo xtask setup`,
//!    `<workspace>/target/msb/prefix/lib`.
//!
//! If none has it, the build fails and says to run `cargo xtask setup` or
//! set `LIBKRUN_DIR`. Nothing is downloaded by the build.
//!
//! Dependent build scripts get `DEP_KRUN_LIB_DIR` (the directory used),
//! `DEP_KRUN_ROOT` (its prefix) and `DEP_KRUN_INCLUDE` (the directory holding
//! `libkrun.h`). At run time the library (`libkrun.so.1`, which `dlopen`s
//! `libkrunfw.so.5`) must be on the loader path: `cargo test` and `cargo run`
//! arrange that for this crate and every crate that depends on it; other
//! binaries need an rpath to `DEP_KRUN_LIB_DIR` or `LD_LIBRARY_PATH`.
//!
//! # Example
//!
//! ```no_run
//! // SAFETY: krun_create_ctx takes no arguments and only allocates a context.
//! let ctx = unsafe { krun_sys::krun_create_ctx() };
//! assert!(ctx >= 0, "krun_create_ctx failed: {ctx}");
//! // SAFETY: `ctx` is a context id returned by krun_create_ctx and not yet freed.
//! let ret = unsafe { krun_sys::krun_free_ctx(ctx as u32) };
//! assert_eq!(ret, 0);
//! ```
//!
//! [libkrun]: https://github.com/containers/libkrun

#![no_std]
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]
#![allow(clippy::missing_safety_doc)]

mod bindings;

pub use bindings::*;
