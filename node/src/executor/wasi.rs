//! A minimal, hand-rolled WASI preview1 (`wasi_snapshot_preview1`) host for plain wasmer.
//!
//! Why not `wasmer-wasix`? It sets up a whole virtual OS per instance (file systems, a
//! runtime, a thread pool, ...), which costs about a millisecond per run; bx3 tasks are
//! pure functions `(argv, env, stdin) -> stdout`, and with plain wasmer a run costs a few
//! tens of microseconds. Doing it by hand also gives us exactly the sandbox we want:
//!
//! * **no file system**: there are no preopened directories, so `path_open` and friends can
//!   never succeed (they link, and answer `ENOSYS`);
//! * **bounded output**: stdout is captured up to a limit and the task is stopped at once when
//!   it goes beyond; of stderr only the last few bytes (the "tail") are kept;
//! * **no panics on guest input**: every guest pointer is bounds-checked against the
//!   current memory size (a bad pointer gets `EFAULT`), arithmetic on guest values is checked.
//!
//! The host functions live in a [`FunctionEnv<WasiCtx>`]; how a task ended (exit code,
//! output limit, unsupported call) is recorded in [`WasiCtx::stop`] before the host function
//! returns an error to unwind the guest, so the runtime never has to guess from a trap message.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use wasmer::{
    AsStoreMut, Extern, Function, FunctionEnv, FunctionEnvMut, FunctionType, Memory, MemoryView,
    RuntimeError, Type, Value,
};

/// The only import module we provide.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// WASI `errno` values (the subset we return).
pub mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const IO: i32 = 29;
    pub const NOSYS: i32 = 52;
    pub const OVERFLOW: i32 = 61;
    pub const SPIPE: i32 = 70;
}

/// At most this many iovecs per `fd_read` / `fd_write` call (as POSIX `IOV_MAX` in wasi-libc).
pub const IOV_MAX: u32 = 1024;

const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_FDSTAT_SET_FLAGS: u64 = 1 << 3;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const RIGHT_POLL_FD_READWRITE: u64 = 1 << 27;

const CLOCK_REALTIME: i32 = 0;
const CLOCK_MONOTONIC: i32 = 1;
const CLOCK_PROCESS_CPUTIME: i32 = 2;
const CLOCK_THREAD_CPUTIME: i32 = 3;

/// Why a host function stopped the guest. Also returned (as the error of the host function)
/// to unwind the wasm stack; the runtime reads the copy kept in [`WasiCtx::stop`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostStop {
    #[error("proc_exit({0})")]
    Exit(u32),
    #[error("stdout exceeded the limit of {0} bytes")]
    OutputTooLarge(usize),
    #[error("proc_raise({0}): the task raised a signal")]
    Raise(i32),
    #[error("WASI function {0} is not supported by bx3")]
    Unsupported(String),
}

/// The WASI functions we implement, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WasiFn {
    ArgsGet,
    ArgsSizesGet,
    EnvironGet,
    EnvironSizesGet,
    FdWrite,
    FdRead,
    FdClose,
    FdFdstatGet,
    FdFdstatSetFlags,
    FdSeek,
    FdPread,
    FdPwrite,
    FdFilestatGet,
    FdPrestatGet,
    FdPrestatDirName,
    ProcExit,
    ProcRaise,
    RandomGet,
    ClockTimeGet,
    ClockResGet,
    SchedYield,
    PollOneoff,
}

const I32: Type = Type::I32;
const I64: Type = Type::I64;

impl WasiFn {
    pub const ALL: [WasiFn; 22] = [
        WasiFn::ArgsGet,
        WasiFn::ArgsSizesGet,
        WasiFn::EnvironGet,
        WasiFn::EnvironSizesGet,
        WasiFn::FdWrite,
        WasiFn::FdRead,
        WasiFn::FdClose,
        WasiFn::FdFdstatGet,
        WasiFn::FdFdstatSetFlags,
        WasiFn::FdSeek,
        WasiFn::FdPread,
        WasiFn::FdPwrite,
        WasiFn::FdFilestatGet,
        WasiFn::FdPrestatGet,
        WasiFn::FdPrestatDirName,
        WasiFn::ProcExit,
        WasiFn::ProcRaise,
        WasiFn::RandomGet,
        WasiFn::ClockTimeGet,
        WasiFn::ClockResGet,
        WasiFn::SchedYield,
        WasiFn::PollOneoff,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WasiFn::ArgsGet => "args_get",
            WasiFn::ArgsSizesGet => "args_sizes_get",
            WasiFn::EnvironGet => "environ_get",
            WasiFn::EnvironSizesGet => "environ_sizes_get",
            WasiFn::FdWrite => "fd_write",
            WasiFn::FdRead => "fd_read",
            WasiFn::FdClose => "fd_close",
            WasiFn::FdFdstatGet => "fd_fdstat_get",
            WasiFn::FdFdstatSetFlags => "fd_fdstat_set_flags",
            WasiFn::FdSeek => "fd_seek",
            WasiFn::FdPread => "fd_pread",
            WasiFn::FdPwrite => "fd_pwrite",
            WasiFn::FdFilestatGet => "fd_filestat_get",
            WasiFn::FdPrestatGet => "fd_prestat_get",
            WasiFn::FdPrestatDirName => "fd_prestat_dir_name",
            WasiFn::ProcExit => "proc_exit",
            WasiFn::ProcRaise => "proc_raise",
            WasiFn::RandomGet => "random_get",
            WasiFn::ClockTimeGet => "clock_time_get",
            WasiFn::ClockResGet => "clock_res_get",
            WasiFn::SchedYield => "sched_yield",
            WasiFn::PollOneoff => "poll_oneoff",
        }
    }

    pub fn from_name(name: &str) -> Option<WasiFn> {
        WasiFn::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The preview1 signature `(params, results)`.
    pub fn signature(self) -> (&'static [Type], &'static [Type]) {
        match self {
            WasiFn::ArgsGet
            | WasiFn::ArgsSizesGet
            | WasiFn::EnvironGet
            | WasiFn::EnvironSizesGet
            | WasiFn::FdFdstatGet
            | WasiFn::FdFdstatSetFlags
            | WasiFn::FdFilestatGet
            | WasiFn::FdPrestatGet
            | WasiFn::RandomGet
            | WasiFn::ClockResGet => (&[I32, I32], &[I32]),
            WasiFn::FdWrite | WasiFn::FdRead | WasiFn::PollOneoff => {
                (&[I32, I32, I32, I32], &[I32])
            }
            WasiFn::FdClose | WasiFn::ProcRaise => (&[I32], &[I32]),
            WasiFn::FdSeek => (&[I32, I64, I32, I32], &[I32]),
            WasiFn::FdPread | WasiFn::FdPwrite => (&[I32, I32, I32, I64, I32], &[I32]),
            WasiFn::FdPrestatDirName => (&[I32, I32, I32], &[I32]),
            WasiFn::ProcExit => (&[I32], &[]),
            WasiFn::ClockTimeGet => (&[I32, I64, I32], &[I32]),
            WasiFn::SchedYield => (&[], &[I32]),
        }
    }

    pub fn function_type(self) -> FunctionType {
        let (params, results) = self.signature();
        FunctionType::new(params, results)
    }
}

/// How to satisfy one `wasi_snapshot_preview1` function import. Computed once per module
/// (when it is prepared) so that a run only has to create the functions.
#[derive(Debug, Clone)]
pub enum ImportPlan {
    Known(WasiFn),
    /// Any other preview1 function: links, and answers `ENOSYS` if it returns a single
    /// `i32` (an errno), else traps when called.
    Unsupported {
        name: String,
        ty: FunctionType,
    },
}

impl ImportPlan {
    /// Plan for importing `wasi_snapshot_preview1.<name>` with type `ty`.
    /// Err((expected, found)) if `name` is a function we implement but `ty` is not its type.
    pub fn for_import(
        name: &str,
        ty: &FunctionType,
    ) -> Result<ImportPlan, (FunctionType, FunctionType)> {
        match WasiFn::from_name(name) {
            Some(f) => {
                let expected = f.function_type();
                if &expected == ty {
                    Ok(ImportPlan::Known(f))
                } else {
                    Err((expected, ty.clone()))
                }
            }
            None => Ok(ImportPlan::Unsupported {
                name: name.to_owned(),
                ty: ty.clone(),
            }),
        }
    }
}

/// Per-run state of the WASI host (the data of the `FunctionEnv`).
#[derive(Debug)]
pub struct WasiCtx {
    args: Strings,
    env: Strings,
    stdin: Vec<u8>,
    stdin_pos: usize,
    stdout: Vec<u8>,
    max_stdout: usize,
    stderr: Vec<u8>,
    max_stderr_tail: usize,
    started: Instant,
    memory: Option<Memory>,
    stop: Option<HostStop>,
}

/// NUL-terminated strings laid out as the guest wants them for `args_get` / `environ_get`.
#[derive(Debug, Default)]
struct Strings {
    blob: Vec<u8>,
    offsets: Vec<usize>,
}

impl Strings {
    fn push(&mut self, parts: &[&[u8]]) {
        self.offsets.push(self.blob.len());
        for p in parts {
            self.blob.extend_from_slice(p);
        }
        self.blob.push(0);
    }
}

impl WasiCtx {
    pub fn new(
        argv: &[String],
        env: &[(String, String)],
        stdin: &[u8],
        max_stdout: usize,
        max_stderr_tail: usize,
    ) -> WasiCtx {
        let mut args = Strings::default();
        for a in argv {
            args.push(&[a.as_bytes()]);
        }
        let mut envs = Strings::default();
        for (k, v) in env {
            envs.push(&[k.as_bytes(), b"=", v.as_bytes()]);
        }
        WasiCtx {
            args,
            env: envs,
            stdin: stdin.to_vec(),
            stdin_pos: 0,
            stdout: Vec::new(),
            max_stdout,
            stderr: Vec::new(),
            max_stderr_tail,
            started: Instant::now(),
            memory: None,
            stop: None,
        }
    }

    /// The guest's exported memory (`memory`); without it every pointer argument is `EFAULT`.
    pub fn set_memory(&mut self, memory: Option<Memory>) {
        self.memory = memory;
    }

    /// Why a host function stopped the guest, if one did.
    pub fn stop(&self) -> Option<&HostStop> {
        self.stop.as_ref()
    }

    pub fn take_stdout(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.stdout)
    }

    /// The last `max_stderr_tail` bytes written to stderr, as (lossy) UTF-8. A character cut
    /// in half at the start of the tail is dropped rather than shown as garbage.
    pub fn stderr_tail(&self) -> String {
        let start = self.stderr.len().saturating_sub(self.max_stderr_tail);
        let mut tail = &self.stderr[start..];
        if start > 0 {
            let skip = tail
                .iter()
                .take(3)
                .take_while(|b| (**b & 0xC0) == 0x80)
                .count();
            tail = &tail[skip..];
        }
        String::from_utf8_lossy(tail).into_owned()
    }

    fn set_stop(&mut self, stop: HostStop) -> HostStop {
        self.stop = Some(stop.clone());
        stop
    }

    fn push_stderr(&mut self, view: &MemoryView, addr: u64, len: u64) -> Result<(), i32> {
        let max = self.max_stderr_tail as u64;
        if max == 0 || len == 0 {
            return Ok(());
        }
        // Only the last `max` bytes of this piece can survive.
        let (addr, len) = if len > max {
            (addr + (len - max), max)
        } else {
            (addr, len)
        };
        let old = self.stderr.len();
        self.stderr.resize(old + len as usize, 0);
        if view.read(addr, &mut self.stderr[old..]).is_err() {
            self.stderr.truncate(old);
            return Err(errno::FAULT);
        }
        // Amortised trimming: never hold more than twice the tail.
        if self.stderr.len() > 2 * self.max_stderr_tail.max(512) {
            let cut = self.stderr.len() - self.max_stderr_tail;
            self.stderr.drain(..cut);
        }
        Ok(())
    }
}

/// Create the host function for one import.
pub fn make_function(
    store: &mut impl AsStoreMut,
    env: &FunctionEnv<WasiCtx>,
    plan: &ImportPlan,
) -> Extern {
    let f = match plan {
        ImportPlan::Known(f) => match f {
            WasiFn::ArgsGet => Function::new_typed_with_env(store, env, args_get),
            WasiFn::ArgsSizesGet => Function::new_typed_with_env(store, env, args_sizes_get),
            WasiFn::EnvironGet => Function::new_typed_with_env(store, env, environ_get),
            WasiFn::EnvironSizesGet => Function::new_typed_with_env(store, env, environ_sizes_get),
            WasiFn::FdWrite => Function::new_typed_with_env(store, env, fd_write),
            WasiFn::FdRead => Function::new_typed_with_env(store, env, fd_read),
            WasiFn::FdClose => Function::new_typed_with_env(store, env, fd_close),
            WasiFn::FdFdstatGet => Function::new_typed_with_env(store, env, fd_fdstat_get),
            WasiFn::FdFdstatSetFlags => {
                Function::new_typed_with_env(store, env, fd_fdstat_set_flags)
            }
            WasiFn::FdSeek => Function::new_typed_with_env(store, env, fd_seek),
            WasiFn::FdPread | WasiFn::FdPwrite => {
                Function::new_typed_with_env(store, env, fd_positional)
            }
            WasiFn::FdFilestatGet => Function::new_typed_with_env(store, env, fd_filestat_get),
            WasiFn::FdPrestatGet => Function::new_typed_with_env(store, env, fd_prestat_get),
            WasiFn::FdPrestatDirName => {
                Function::new_typed_with_env(store, env, fd_prestat_dir_name)
            }
            WasiFn::ProcExit => Function::new_typed_with_env(store, env, proc_exit),
            WasiFn::ProcRaise => Function::new_typed_with_env(store, env, proc_raise),
            WasiFn::RandomGet => Function::new_typed_with_env(store, env, random_get),
            WasiFn::ClockTimeGet => Function::new_typed_with_env(store, env, clock_time_get),
            WasiFn::ClockResGet => Function::new_typed_with_env(store, env, clock_res_get),
            WasiFn::SchedYield => Function::new_typed_with_env(store, env, sched_yield),
            WasiFn::PollOneoff => Function::new_typed_with_env(store, env, poll_oneoff),
        },
        ImportPlan::Unsupported { name, ty } => {
            let returns_errno = ty.results() == [Type::I32];
            let name = name.clone();
            Function::new_with_env(
                store,
                env,
                ty.clone(),
                move |mut env: FunctionEnvMut<WasiCtx>, _args: &[Value]| {
                    if returns_errno {
                        Ok(vec![Value::I32(errno::NOSYS)])
                    } else {
                        let stop = env.data_mut().set_stop(HostStop::Unsupported(name.clone()));
                        Err(RuntimeError::user(Box::new(stop)))
                    }
                },
            )
        }
    };
    Extern::Function(f)
}

// ---------------------------------------------------------------------------------------
// Guest memory helpers. Guest pointers are u32 offsets; all ranges are checked against the
// current memory size *before* touching memory (so wasmer never logs OOB warnings either).

/// A guest pointer argument as an offset.
fn ptr(p: i32) -> u64 {
    u64::from(p as u32)
}

fn check_range(view: &MemoryView, addr: u64, len: u64) -> Result<(), i32> {
    match addr.checked_add(len) {
        Some(end) if end <= view.data_size() => Ok(()),
        _ => Err(errno::FAULT),
    }
}

fn read_bytes(view: &MemoryView, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
    check_range(view, addr, buf.len() as u64)?;
    view.read(addr, buf).map_err(|_| errno::FAULT)
}

fn write_bytes(view: &MemoryView, addr: u64, data: &[u8]) -> Result<(), i32> {
    check_range(view, addr, data.len() as u64)?;
    view.write(addr, data).map_err(|_| errno::FAULT)
}

fn read_u32(view: &MemoryView, addr: u64) -> Result<u32, i32> {
    let mut b = [0u8; 4];
    read_bytes(view, addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn write_u32(view: &MemoryView, addr: u64, v: u32) -> Result<(), i32> {
    write_bytes(view, addr, &v.to_le_bytes())
}

fn write_u64(view: &MemoryView, addr: u64, v: u64) -> Result<(), i32> {
    write_bytes(view, addr, &v.to_le_bytes())
}

/// The `i`-th iovec `(buf, len)` of the array at `iovs`.
fn iovec(view: &MemoryView, iovs: u64, i: u32) -> Result<(u64, u64), i32> {
    let at = iovs + 8 * u64::from(i);
    let buf = read_u32(view, at)?;
    let len = read_u32(view, at + 4)?;
    Ok((u64::from(buf), u64::from(len)))
}

/// Validate an iovec array and every buffer in it; returns the total length.
fn iovecs_total(view: &MemoryView, iovs: i32, iovs_len: i32) -> Result<u64, i32> {
    let n = iovs_len as u32;
    if n > IOV_MAX {
        return Err(errno::INVAL);
    }
    let iovs = ptr(iovs);
    check_range(view, iovs, 8 * u64::from(n))?;
    let mut total = 0u64;
    for i in 0..n {
        let (buf, len) = iovec(view, iovs, i)?;
        check_range(view, buf, len)?;
        total += len;
    }
    Ok(total)
}

/// Run `f` with the context and a view of the guest memory (`EFAULT` if there is none).
fn with_mem<R>(
    env: &mut FunctionEnvMut<WasiCtx>,
    f: impl FnOnce(&mut WasiCtx, &MemoryView) -> Result<R, i32>,
) -> Result<R, i32> {
    let (ctx, store) = env.data_and_store_mut();
    let Some(memory) = ctx.memory.clone() else {
        return Err(errno::FAULT);
    };
    let view = memory.view(&store);
    f(ctx, &view)
}

fn errno_of(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => errno::SUCCESS,
        Err(e) => e,
    }
}

fn to_u32(n: usize) -> Result<u32, i32> {
    u32::try_from(n).map_err(|_| errno::OVERFLOW)
}

// ---------------------------------------------------------------------------------------
// args / environ

fn strings_sizes(view: &MemoryView, s: &Strings, count_ptr: i32, size_ptr: i32) -> Result<(), i32> {
    write_u32(view, ptr(count_ptr), to_u32(s.offsets.len())?)?;
    write_u32(view, ptr(size_ptr), to_u32(s.blob.len())?)
}

fn strings_get(view: &MemoryView, s: &Strings, ptrs: i32, buf: i32) -> Result<(), i32> {
    let ptrs = ptr(ptrs);
    let buf = ptr(buf);
    check_range(view, ptrs, 4 * s.offsets.len() as u64)?;
    write_bytes(view, buf, &s.blob)?;
    for (i, off) in s.offsets.iter().enumerate() {
        // `buf + off` fits in u32: the whole blob was just written inside the memory.
        let p = to_u32(buf as usize + off)?;
        write_u32(view, ptrs + 4 * i as u64, p)?;
    }
    Ok(())
}

fn args_sizes_get(mut env: FunctionEnvMut<WasiCtx>, argc: i32, buf_size: i32) -> i32 {
    errno_of(with_mem(&mut env, |ctx, view| {
        strings_sizes(view, &ctx.args, argc, buf_size)
    }))
}

fn args_get(mut env: FunctionEnvMut<WasiCtx>, argv: i32, argv_buf: i32) -> i32 {
    errno_of(with_mem(&mut env, |ctx, view| {
        strings_get(view, &ctx.args, argv, argv_buf)
    }))
}

fn environ_sizes_get(mut env: FunctionEnvMut<WasiCtx>, count: i32, buf_size: i32) -> i32 {
    errno_of(with_mem(&mut env, |ctx, view| {
        strings_sizes(view, &ctx.env, count, buf_size)
    }))
}

fn environ_get(mut env: FunctionEnvMut<WasiCtx>, environ: i32, environ_buf: i32) -> i32 {
    errno_of(with_mem(&mut env, |ctx, view| {
        strings_get(view, &ctx.env, environ, environ_buf)
    }))
}

// ---------------------------------------------------------------------------------------
// fds: 0 = stdin (the job's input), 1 = stdout (captured), 2 = stderr (tail kept)

fn fd_write(
    mut env: FunctionEnvMut<WasiCtx>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> Result<i32, HostStop> {
    if fd != 1 && fd != 2 {
        return Ok(errno::BADF);
    }
    let r = with_mem(&mut env, |ctx, view| {
        let total = iovecs_total(view, iovs, iovs_len)?;
        // nwritten must be writable before we consume anything.
        check_range(view, ptr(nwritten), 4)?;
        if fd == 1 {
            let new_len = (ctx.stdout.len() as u64).saturating_add(total);
            if new_len > ctx.max_stdout as u64 {
                return Ok(Err(ctx.set_stop(HostStop::OutputTooLarge(ctx.max_stdout))));
            }
        }
        let iovs = ptr(iovs);
        for i in 0..iovs_len as u32 {
            let (buf, len) = iovec(view, iovs, i)?;
            if fd == 1 {
                let old = ctx.stdout.len();
                ctx.stdout.resize(old + len as usize, 0);
                if let Err(e) = read_bytes(view, buf, &mut ctx.stdout[old..]) {
                    ctx.stdout.truncate(old);
                    return Err(e);
                }
            } else {
                ctx.push_stderr(view, buf, len)?;
            }
        }
        // `total` <= the memory size (< 2^32 + ...); it was validated range by range, but a
        // guest may list the same buffer many times, so do not assume it fits in u32.
        write_u32(
            view,
            ptr(nwritten),
            u32::try_from(total).unwrap_or(u32::MAX),
        )?;
        Ok(Ok(()))
    });
    match r {
        Ok(Ok(())) => Ok(errno::SUCCESS),
        Ok(Err(stop)) => Err(stop),
        Err(e) => Ok(e),
    }
}

fn fd_read(mut env: FunctionEnvMut<WasiCtx>, fd: i32, iovs: i32, iovs_len: i32, nread: i32) -> i32 {
    if fd != 0 {
        return errno::BADF;
    }
    errno_of(with_mem(&mut env, |ctx, view| {
        iovecs_total(view, iovs, iovs_len)?;
        check_range(view, ptr(nread), 4)?;
        let iovs = ptr(iovs);
        let mut total = 0usize;
        for i in 0..iovs_len as u32 {
            let rest = &ctx.stdin[ctx.stdin_pos..];
            if rest.is_empty() {
                break;
            }
            let (buf, len) = iovec(view, iovs, i)?;
            let n = rest.len().min(usize::try_from(len).unwrap_or(usize::MAX));
            write_bytes(view, buf, &rest[..n])?;
            ctx.stdin_pos += n;
            total += n;
        }
        write_u32(view, ptr(nread), to_u32(total)?)
    }))
}

fn is_std_fd(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

fn fd_close(_env: FunctionEnvMut<WasiCtx>, fd: i32) -> i32 {
    if is_std_fd(fd) {
        errno::SUCCESS
    } else {
        errno::BADF
    }
}

fn fd_fdstat_get(mut env: FunctionEnvMut<WasiCtx>, fd: i32, buf: i32) -> i32 {
    if !is_std_fd(fd) {
        return errno::BADF;
    }
    // struct fdstat { u8 filetype; u16 flags (at 2); u64 rights_base (at 8); u64 rights_inheriting (at 16) }
    let rights = if fd == 0 {
        RIGHT_FD_READ
    } else {
        RIGHT_FD_WRITE
    } | RIGHT_FD_FDSTAT_SET_FLAGS
        | RIGHT_POLL_FD_READWRITE;
    let mut stat = [0u8; 24];
    stat[0] = FILETYPE_CHARACTER_DEVICE;
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    errno_of(with_mem(&mut env, |_, view| {
        write_bytes(view, ptr(buf), &stat)
    }))
}

fn fd_fdstat_set_flags(_env: FunctionEnvMut<WasiCtx>, fd: i32, _flags: i32) -> i32 {
    if is_std_fd(fd) {
        errno::SUCCESS
    } else {
        errno::BADF
    }
}

/// `fd_pread` / `fd_pwrite`: stdio are pipes, which have no position (`ESPIPE`, as on a real
/// pipe). Runtimes that try positional I/O first (Zig's `std.Io` writer) then fall back to
/// plain reads and writes; `ENOSYS` made them fail instead.
fn fd_positional(
    _env: FunctionEnvMut<WasiCtx>,
    fd: i32,
    _iovs: i32,
    _iovs_len: i32,
    _offset: i64,
    _done: i32,
) -> i32 {
    if is_std_fd(fd) {
        errno::SPIPE
    } else {
        errno::BADF
    }
}

fn fd_seek(
    _env: FunctionEnvMut<WasiCtx>,
    fd: i32,
    _offset: i64,
    _whence: i32,
    _newoffset: i32,
) -> i32 {
    if is_std_fd(fd) {
        errno::SPIPE
    } else {
        errno::BADF
    }
}

fn fd_filestat_get(mut env: FunctionEnvMut<WasiCtx>, fd: i32, buf: i32) -> i32 {
    if !is_std_fd(fd) {
        return errno::BADF;
    }
    // struct filestat { u64 dev; u64 ino; u8 filetype (at 16); u64 nlink; u64 size; u64 atim, mtim, ctim } = 64 bytes
    let mut stat = [0u8; 64];
    stat[16] = FILETYPE_CHARACTER_DEVICE;
    errno_of(with_mem(&mut env, |_, view| {
        write_bytes(view, ptr(buf), &stat)
    }))
}

fn fd_prestat_get(_env: FunctionEnvMut<WasiCtx>, _fd: i32, _buf: i32) -> i32 {
    errno::BADF // no preopened directories: the guest has no file system
}

fn fd_prestat_dir_name(_env: FunctionEnvMut<WasiCtx>, _fd: i32, _path: i32, _len: i32) -> i32 {
    errno::BADF
}

// ---------------------------------------------------------------------------------------
// process, randomness, clocks, scheduling

fn proc_exit(mut env: FunctionEnvMut<WasiCtx>, code: i32) -> Result<(), HostStop> {
    Err(env.data_mut().set_stop(HostStop::Exit(code as u32)))
}

fn proc_raise(mut env: FunctionEnvMut<WasiCtx>, sig: i32) -> Result<i32, HostStop> {
    Err(env.data_mut().set_stop(HostStop::Raise(sig)))
}

fn random_get(mut env: FunctionEnvMut<WasiCtx>, buf: i32, len: i32) -> i32 {
    errno_of(with_mem(&mut env, |_, view| {
        let (mut at, len) = (ptr(buf), u64::from(len as u32));
        check_range(view, at, len)?;
        let end = at + len;
        let mut rng = rand::thread_rng(); // ChaCha, seeded and periodically reseeded from the OS
        let mut chunk = [0u8; 256];
        while at < end {
            let n = (end - at).min(chunk.len() as u64) as usize;
            rng.try_fill_bytes(&mut chunk[..n]).map_err(|_| errno::IO)?;
            write_bytes(view, at, &chunk[..n])?;
            at += n as u64;
        }
        Ok(())
    }))
}

fn monotonic_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn clock_time_get(mut env: FunctionEnvMut<WasiCtx>, id: i32, _precision: i64, time: i32) -> i32 {
    let now = match id {
        CLOCK_REALTIME => match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => nanos(d),
            Err(_) => 0,
        },
        CLOCK_MONOTONIC => nanos(monotonic_base().elapsed()),
        // A task is single-threaded: approximate its CPU time by the time it has been running.
        CLOCK_PROCESS_CPUTIME | CLOCK_THREAD_CPUTIME => nanos(env.data().started.elapsed()),
        _ => return errno::INVAL,
    };
    errno_of(with_mem(&mut env, |_, view| {
        write_u64(view, ptr(time), now)
    }))
}

fn clock_res_get(mut env: FunctionEnvMut<WasiCtx>, id: i32, res: i32) -> i32 {
    if !(CLOCK_REALTIME..=CLOCK_THREAD_CPUTIME).contains(&id) {
        return errno::INVAL;
    }
    errno_of(with_mem(&mut env, |_, view| write_u64(view, ptr(res), 1)))
}

fn sched_yield(_env: FunctionEnvMut<WasiCtx>) -> i32 {
    errno::SUCCESS
}

fn poll_oneoff(_env: FunctionEnvMut<WasiCtx>, _in: i32, _out: i32, _n: i32, _nevents: i32) -> i32 {
    errno::NOSYS // no sleeping, no waiting on fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmer::{Engine, Store};

    /// The table in `WasiFn::signature` matches what the typed host functions really are.
    #[test]
    fn signatures_match_host_functions() {
        let mut store = Store::new(Engine::default());
        let env = FunctionEnv::new(&mut store, WasiCtx::new(&[], &[], &[], 0, 0));
        for f in WasiFn::ALL {
            let Extern::Function(func) = make_function(&mut store, &env, &ImportPlan::Known(f))
            else {
                panic!("not a function");
            };
            assert_eq!(func.ty(&store), f.function_type(), "{}", f.name());
            assert_eq!(WasiFn::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn stderr_tail_is_bounded_and_utf8_clean() {
        let mut ctx = WasiCtx::new(&[], &[], &[], 0, 3);
        ctx.stderr = "aé€x".as_bytes().to_vec(); // 61 | c3 a9 | e2 82 ac | 78
        assert_eq!(ctx.stderr_tail(), "x"); // 82 ac 78: the cut `€` is dropped
        ctx.max_stderr_tail = 4;
        assert_eq!(ctx.stderr_tail(), "€x");
        ctx.max_stderr_tail = 5;
        assert_eq!(ctx.stderr_tail(), "€x"); // a9 dropped
        ctx.max_stderr_tail = 100;
        assert_eq!(ctx.stderr_tail(), "aé€x");
    }
}
