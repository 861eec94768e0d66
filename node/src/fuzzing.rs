//! Fuzz targets: every decoder and handler a peer or a user reaches, fed arbitrary bytes.
//!
//! One function per target, used twice: by `fuzz/` (cargo-fuzz, libFuzzer, nightly) for long
//! coverage-guided runs, and by the property tests at the bottom of this file, which run the
//! same functions in every `cargo test` on stable with a bounded number of cases (arbitrary
//! bytes, and structurally valid but hostile values). A target passes when it returns: no
//! panic, no unbounded allocation, and the invariants it asserts hold.
//!
//! | target            | what it feeds                                                        |
//! |-------------------|----------------------------------------------------------------------|
//! | `wire_envelope`   | the versioned CBOR envelope, as any body                             |
//! | `gossip`          | gossip decode, then a real cluster core (`cluster::Core::step`)       |
//! | `rpc`             | request/response decode (specs verify), then the request into a core |
//! | `codec`           | the request-response length-prefixed framing (`net::codec`)          |
//! | `executor_frame`  | executor pipe frames, both directions                                |
//! | `parse_dag`       | YAML text through the guard, the parser and validation               |
//! | `planner`         | hostile specs and task records decoded like a peer's, then scheduled |
//! | `wasi_host`       | every WASI host function, random pointers into random memory         |

use std::io::Cursor;
use std::sync::Arc;

use arbitrary::{Result as ArbResult, Unstructured};
use bx3_protocol::api::{Counts, DagState, TaskState};
use bx3_protocol::dag::{parse_dag as parse, Input, Part, ValidDag};
use bx3_protocol::ids::{DagId, NodeId};
use bx3_protocol::mesh::{self, Request, Response};
use bx3_protocol::wire;

use crate::cluster::planner::{Planner, Report};
use crate::cluster::records::Reads;
use crate::cluster::{Capacity, Config, Core, Input as CoreInput, Output};
use crate::election::{self, HashVotes};
use crate::executor::frame;
use crate::store::{DagMeta, SpecRecord, Store, TaskRecord};

/// The envelope: size, version, then any CBOR body; what decodes re-encodes.
pub fn wire_envelope(data: &[u8]) {
    // The one-pass read of the usual layout takes what the general two-pass read takes, as
    // the same value, and refuses what it refuses. (A wrong version inside a message that is
    // also malformed further on may be refused for either reason.)
    let fast = wire::decode::<serde_cbor::Value>(data, wire::MAX_RPC);
    let general = wire::decode_general::<serde_cbor::Value>(data, wire::MAX_RPC);
    match (&fast, &general) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "both reads decode the same value"),
        (_, Err(wire::CodecError::Version { .. })) => assert_eq!(fast, general),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("one read takes what the other refuses: {a:?} / {b:?}"),
    }
    if let Ok(value) = fast {
        if let Ok(bytes) = wire::encode(&value, wire::MAX_RPC) {
            let again = wire::decode::<serde_cbor::Value>(&bytes, wire::MAX_RPC);
            assert!(again.is_ok(), "an encoded envelope must decode");
        }
    }
    let _ = wire::decode::<serde_cbor::Value>(data, wire::MAX_GOSSIP);
}

/// Gossip as the node handles it: decode, then into a real cluster core (the code the node
/// runs), twice, with ticks between, from a connected peer.
pub fn gossip(data: &[u8]) {
    let Ok(msg) = mesh::decode_gossip(data) else {
        return;
    };
    let bytes = mesh::encode_gossip(&msg).expect("what decoded re-encodes");
    assert!(bytes.len() <= wire::MAX_GOSSIP);
    let from = peer();
    let mut node = FuzzNode::new();
    node.step(vec![
        CoreInput::Connected(from.clone()),
        CoreInput::Gossip {
            from: from.clone(),
            msg: msg.clone(),
        },
    ]);
    node.ticks(5);
    node.step(vec![CoreInput::Gossip { from, msg }]);
    node.ticks(60);
}

/// The peer every fuzzed message comes from.
fn peer() -> NodeId {
    "12D3KooWFuzzPeer".parse().expect("a node id")
}

/// A real cluster core for a node of its own, 2 executors, nothing persisted (the fuzz
/// targets here and the core's own tests).
pub(crate) fn lone_core(me: &str, seed: u64) -> Core {
    let me: NodeId = me.parse().expect("a node id");
    Core::new(
        Config {
            me: me.clone(),
            election: election::Params::default(),
            ram_per_executor_mb: 128,
            min_free_ram_mb: 0,
            max_executors: None,
            version: "bx3-test".into(),
            private_mesh: false,
            seed,
        },
        None,
        Default::default(),
        Arc::new(HashVotes::new(me)),
        Capacity {
            executors: 2,
            available_ram_mb: 1024,
            ram_slots: 8,
            cpu_cores: 2,
            limited_by: None,
        },
    )
}

/// One real cluster core over a temporary store, stepped as the runtime steps it (its
/// writes applied after each step). What it answers is checked, not trusted.
struct FuzzNode {
    core: Core,
    store: Store,
    now: u64,
}

impl FuzzNode {
    fn new() -> FuzzNode {
        let core = lone_core("12D3KooWFuzzSelf", 7);
        FuzzNode {
            core,
            store: Store::temporary().expect("a temporary store"),
            now: 1_700_000_000_000,
        }
    }

    fn step(&mut self, inputs: Vec<CoreInput>) -> Vec<Output> {
        self.now += crate::cluster::TICK_MS;
        let reads = StoreReads(&self.store);
        let out = self
            .core
            .step(
                crate::cluster::Now {
                    mono_ms: self.now,
                    wall_ms: self.now,
                },
                inputs,
                &reads,
            )
            .expect("a temporary store does not fail");
        for o in &out {
            if let Output::Write(w) = o {
                self.store.apply(w).expect("writes apply");
            }
        }
        out
    }

    fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.step(vec![CoreInput::Tick]);
        }
    }
}

/// Reads of the store; no module is here (the core asks to fetch them).
struct StoreReads<'a>(&'a Store);

impl Reads for StoreReads<'_> {
    fn meta(&self, id: &DagId) -> Result<Option<DagMeta>, crate::store::StoreError> {
        self.0.meta(id)
    }
    fn spec(&self, id: &DagId) -> Result<Option<Arc<SpecRecord>>, crate::store::StoreError> {
        self.0.spec_shared(id)
    }
    fn task_count(&self, id: &DagId) -> Result<Option<usize>, crate::store::StoreError> {
        self.0.task_count(id)
    }
    fn tasks(&self, id: &DagId, count: usize) -> Result<Vec<TaskRecord>, crate::store::StoreError> {
        self.0.tasks(id, count)
    }
    fn task(&self, id: &DagId, idx: u32) -> Result<Option<TaskRecord>, crate::store::StoreError> {
        self.0.task(id, idx)
    }
    fn list(&self, limit: usize) -> Result<Vec<(DagId, DagMeta)>, crate::store::StoreError> {
        self.0.list(limit)
    }
    fn unfinished(&self) -> Result<Vec<DagId>, crate::store::StoreError> {
        self.0.unfinished()
    }
    fn has_module(&self, _: &bx3_protocol::ids::ModuleHash) -> bool {
        false
    }
}

/// Requests and responses of `/bx3/rpc/2`; a spec inside can only decode if it verifies. A
/// request that decodes goes into a real core twice: as a follower that has no controller,
/// and as the controller of a mesh of one (which the peer does not lead).
pub fn rpc(data: &[u8]) {
    if let Ok(req) = mesh::decode_rpc::<Request>(data) {
        check_request_specs(&req);
        let bytes = mesh::encode_rpc(&req).expect("what decoded re-encodes");
        let again = mesh::decode_rpc::<Request>(&bytes).expect("and decodes again");
        check_request_specs(&again);
        let from = peer();
        let mut follower = FuzzNode::new();
        follower.step(vec![CoreInput::Connected(from.clone())]);
        follower.step(vec![CoreInput::Request {
            from: from.clone(),
            rid: 1,
            req: req.clone(),
        }]);
        follower.ticks(3);
        let mut leader = FuzzNode::new();
        leader.ticks(120);
        leader.step(vec![
            CoreInput::Connected(from.clone()),
            CoreInput::Request { from, rid: 1, req },
        ]);
        leader.ticks(3);
    }
    let _ = mesh::decode_rpc::<Response>(data);
}

fn check_request_specs(req: &Request) {
    let verified = |spec: &mesh::Spec| {
        assert_eq!(spec.dag.verify(), Ok(()), "a decoded spec is verified");
        assert_eq!(spec.check(), Ok(()), "and its module table fits");
    };
    match req {
        Request::Submit { spec, .. } => verified(spec),
        Request::Push { dags } => dags
            .iter()
            .filter_map(|d| d.spec.as_ref())
            .for_each(verified),
        Request::Replicate { batches, .. } => batches
            .iter()
            .flat_map(|b| &b.dags)
            .filter_map(|d| d.spec.as_ref())
            .for_each(verified),
        _ => {}
    }
}

/// The request-response framing: a length prefix over the cap is refused before anything is
/// allocated for it; a short body is an error; nothing read is longer than announced.
pub fn codec(data: &[u8]) {
    use libp2p::futures::executor::block_on;
    use libp2p::futures::io::Cursor as AsyncCursor;
    const MAX: usize = 64 * 1024;
    let mut io = AsyncCursor::new(data);
    match block_on(crate::net::codec::read_body(&mut io, MAX, "request")) {
        Ok(body) => {
            assert!(body.len() <= MAX);
            assert_eq!(body.len() + 4, io.position() as usize);
            let mut out = AsyncCursor::new(Vec::new());
            block_on(crate::net::codec::write_body(
                &mut out, &body, MAX, "response",
            ))
            .expect("a read body can be written back");
            assert_eq!(&out.get_ref()[..], &data[..body.len() + 4]);
        }
        Err(_) => assert!(io.position() as usize <= data.len()),
    }
}

/// Executor pipe frames: one length-prefixed CBOR body, decoded as either direction.
pub fn executor_frame(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    while let Ok(Some(body)) = frame::read_blocking(&mut cursor) {
        if let Ok(req) = frame::decode::<frame::Request>(&body) {
            let bytes = frame::encode(&req).expect("a decoded request re-encodes");
            let mut back = Cursor::new(bytes);
            assert!(matches!(frame::read_blocking(&mut back), Ok(Some(_))));
        }
        let _ = frame::decode::<frame::Response>(&body);
    }
}

/// A DAG file: the guard, the parser, validation. What validates verifies, survives a CBOR
/// round trip (through the checking decoder) unchanged, orders topologically, and resolves
/// its inputs within the limit or with an error.
pub fn parse_dag(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let stats = bx3_protocol::yaml_guard::scan(text);
    #[cfg(feature = "libyaml-oracle")]
    {
        let (theirs, clean) = bx3_protocol::yaml_guard::oracle::scan(text);
        assert!(
            stats.max_flow >= theirs.max_flow,
            "flow: {stats:?} vs {theirs:?}"
        );
        assert!(
            stats.aliases >= theirs.aliases,
            "aliases: {stats:?} vs {theirs:?}"
        );
        assert!(
            stats.nodes >= theirs.nodes,
            "nodes: {stats:?} vs {theirs:?}"
        );
        if clean {
            assert_eq!(
                (stats.max_flow, stats.aliases, stats.nodes),
                (theirs.max_flow, theirs.aliases, theirs.nodes)
            );
        }
    }
    let Ok(dag) = parse(text) else {
        return;
    };
    assert!(stats.max_depth <= bx3_protocol::yaml_guard::MAX_DEPTH + 1);
    check_valid(&dag);
}

fn check_valid(dag: &ValidDag) {
    assert_eq!(dag.verify(), Ok(()));
    let bytes = serde_cbor::to_vec(dag).expect("encodes");
    let back: ValidDag = serde_cbor::from_slice(&bytes).expect("a valid DAG decodes");
    assert_eq!(&back, dag);
    assert_eq!(dag.topo_order().len(), dag.tasks.len());
    assert!(dag.size_bytes() <= bx3_protocol::MAX_DAG_BYTES);
    for i in 0..dag.tasks.len() {
        let _ = dag.resolve_inputs(i, |_| "out");
    }
}

/// Hostile specs and task records, shaped like a peer's `Submit`/`Replicate` and decoded as
/// the node decodes them, then scheduled with hostile results (wrong indices, stale
/// attempts, huge outputs), requeues and a cancel. The counts stay consistent.
pub fn planner(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = planner_run(&mut u);
}

fn planner_run(u: &mut Unstructured) -> ArbResult<()> {
    let dag = hostile_dag(u)?;
    let spec = SpecRecord {
        dag,
        modules: [(
            "m.wasm".to_string(),
            "ab".repeat(32).parse().expect("a hash"),
        )]
        .into(),
    };
    // Decoded as a peer's message or a stored record is: through `verify`.
    let bytes = serde_cbor::to_vec(&spec).expect("encodes");
    let Ok(spec) = serde_cbor::from_slice::<SpecRecord>(&bytes) else {
        return Ok(());
    };
    check_valid(&spec.dag);
    let n = spec.dag.tasks.len();
    let mut records = Vec::new();
    for _ in 0..u.int_in_range(0..=n + 2)? {
        records.push(TaskRecord {
            state: task_state(u)?,
            attempts: u.arbitrary()?,
            output: if u.arbitrary()? {
                Some("o".repeat(u.int_in_range(0..=64)?))
            } else {
                None
            },
            ..TaskRecord::default()
        });
    }
    let id = DagId::new(1, 2);
    let meta = DagMeta {
        name: spec.dag.name.clone(),
        description: None,
        source: None,
        state: DagState::Pending,
        created_at_ms: 1,
        finished_at_ms: None,
        version: 0,
        counts: Counts::default(),
    };
    let mut p = Planner::new();
    p.add(id, meta, Arc::new(spec), records, 1);
    let me: NodeId = "me".parse().expect("a node id");
    let mut running = Vec::new();
    for step in 0..u.int_in_range(0..=64u32)? {
        match u.int_in_range(0..=5u8)? {
            0 | 1 => {
                if let Some(a) = p.next_assignment(&me, u64::from(step), |_| true) {
                    assert!((a.task as usize) < n);
                    running.push((a.task, a.attempt));
                }
            }
            2 => {
                // A result for a running task or for any index at all (a foreign result).
                let (task, attempt) = match (u.arbitrary::<bool>()?, running.pop()) {
                    (true, Some(r)) => r,
                    _ => (u.arbitrary()?, u.arbitrary()?),
                };
                let outcome = if u.arbitrary()? {
                    Ok("x".repeat(u.int_in_range(0..=4096)?))
                } else {
                    Err("boom".to_string())
                };
                let report = Report {
                    from: &me,
                    run_ms: 1,
                    stderr: None,
                };
                p.on_result(id, task, attempt, outcome, report, u64::from(step));
            }
            3 => {
                let (task, attempt) = running.pop().unwrap_or((u.arbitrary()?, u.arbitrary()?));
                p.requeue(id, task, attempt, u64::from(step));
            }
            4 => {
                p.cancel(id, u64::from(step));
            }
            _ => {
                let _ = p.take_dirty();
            }
        }
        if let Some(run) = p.run(&id) {
            let c = run.meta.counts;
            assert_eq!(c.total, n as u64);
            let sum = c.pending + c.running + c.succeeded + c.failed + c.skipped + c.cancelled;
            assert_eq!(sum, n as u64, "counts add up: {c:?}");
        }
    }
    Ok(())
}

fn task_state(u: &mut Unstructured) -> ArbResult<TaskState> {
    Ok(*u.choose(&[
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Skipped,
        TaskState::Cancelled,
    ])?)
}

/// A `ValidDag` as a peer could send it: a sensible DAG (acyclic, references listed in
/// `deps`) two times in three, otherwise one defect mixed in: an index out of range, a
/// repeated or self dependency, a cycle, a duplicate id, a reference outside `deps`, a bad
/// module name, a zero timeout, absurd memory, an empty name.
fn hostile_dag(u: &mut Unstructured) -> ArbResult<ValidDag> {
    let n = u.int_in_range(1..=12u32)?;
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut deps: Vec<u32> = Vec::new();
        if i > 0 {
            for _ in 0..u.int_in_range(0..=3)? {
                let d = u.int_in_range(0..=i - 1)?;
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
        }
        let mut inputs = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            inputs.push(match (u.int_in_range(0..=2u8)?, deps.is_empty()) {
                (1, false) => Input::Output(*u.choose(&deps)?),
                (2, false) => Input::Template(vec![
                    Part::Text(u.arbitrary()?),
                    Part::Output(*u.choose(&deps)?),
                ]),
                _ => Input::Literal(u.arbitrary()?),
            });
        }
        tasks.push(bx3_protocol::ValidTask {
            id: format!("t{i}"),
            module: "m.wasm".into(),
            inputs,
            deps,
            stdin: String::new(),
            env: Default::default(),
            timeout_ms: 1000,
            retries: u.int_in_range(0..=3)?,
            memory_mb: None,
        });
    }
    let mut dag = ValidDag {
        name: "fuzz".into(),
        description: None,
        tasks,
    };
    if u.ratio(1, 3)? {
        let t = u.int_in_range(0..=n - 1)? as usize;
        let any: u32 = u.arbitrary()?;
        let task = &mut dag.tasks[t];
        match u.int_in_range(0..=9u8)? {
            0 => task.deps.push(n.saturating_add(any % 1000)),
            1 => task.deps.push(t as u32),
            2 => {
                if let Some(&d) = task.deps.first() {
                    task.deps.push(d);
                }
            }
            3 => {
                // A back edge from an earlier task: a cycle.
                let later = t as u32;
                if let Some(first) = dag.tasks.first_mut() {
                    first.deps.push(later);
                }
            }
            4 => task.id = "t0".into(),
            5 => task.inputs.push(Input::Output(any % (n + 2))),
            6 => task.module = u.arbitrary()?,
            7 => task.timeout_ms = 0,
            8 => task.memory_mb = Some(u64::from(any) << 20),
            _ => dag.name = String::new(),
        }
    }
    Ok(dag)
}

/// Every WASI host function with arguments from the fuzzer (pointers and lengths anywhere,
/// often near the end of memory) on a memory filled by the fuzzer. A host function answers
/// with an errno or stops the guest; it never panics, and stdout stays within its limit.
pub fn wasi_host(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = wasi_run(&mut u);
}

fn wasi_run(u: &mut Unstructured) -> ArbResult<()> {
    use crate::executor::wasi::{make_function, ImportPlan, WasiCtx, WasiFn};
    use wasmer::{Extern, FunctionEnv, Memory, MemoryType, Store, Type, Value};

    thread_local! {
        static ENGINE: wasmer::Engine = wasmer::Engine::default();
    }
    let mut store = ENGINE.with(|e| Store::new(e.clone()));
    let pages = u.int_in_range(0..=2u32)?;
    let memory =
        Memory::new(&mut store, MemoryType::new(pages, Some(2), false)).expect("a small memory");
    let size = u64::from(pages) * 65536;
    let argv: Vec<String> = (0..u.int_in_range(0..=3)?)
        .map(|_| u.arbitrary())
        .collect::<ArbResult<_>>()?;
    let env: Vec<(String, String)> = (0..u.int_in_range(0..=2)?)
        .map(|_| Ok((u.arbitrary()?, u.arbitrary()?)))
        .collect::<ArbResult<_>>()?;
    let stdin: Vec<u8> = u.arbitrary()?;
    let max_stdout = u.int_in_range(0..=4096usize)?;
    let mut ctx = WasiCtx::new(&argv, &env, &stdin, max_stdout, u.int_in_range(0..=64)?);
    ctx.set_memory(Some(memory.clone()));
    let fenv = FunctionEnv::new(&mut store, ctx);
    // Memory contents: chunks of fuzzer bytes at fuzzer-chosen offsets.
    if size > 0 {
        for _ in 0..u.int_in_range(0..=8)? {
            let at = u.int_in_range(0..=size - 1)?;
            let chunk: Vec<u8> = u.arbitrary()?;
            let len = chunk.len().min((size - at) as usize);
            memory
                .view(&store)
                .write(at, &chunk[..len])
                .expect("in bounds");
        }
    }
    let ptr = |u: &mut Unstructured| -> ArbResult<i32> {
        Ok(match u.int_in_range(0..=4u8)? {
            0 => u.arbitrary()?,
            1 => u.int_in_range(0..=64)?,
            2 => (size as i64 - i64::from(u.int_in_range(0..=16u8)?)) as i32,
            3 => -1,
            _ => u.int_in_range(0..=size.max(1) as i32)?,
        })
    };
    for _ in 0..u.int_in_range(1..=12)? {
        let plan = if u.ratio(1, 10)? {
            ImportPlan::Unsupported {
                name: "path_open".into(),
                ty: wasmer::FunctionType::new(vec![Type::I32], vec![Type::I32]),
            }
        } else {
            ImportPlan::Known(*u.choose(&WasiFn::ALL)?)
        };
        let Extern::Function(f) = make_function(&mut store, &fenv, &plan) else {
            unreachable!("host functions are functions");
        };
        let ty = f.ty(&store);
        let mut args = Vec::new();
        for p in ty.params() {
            args.push(match p {
                Type::I64 => Value::I64(u.arbitrary()?),
                _ => Value::I32(ptr(u)?),
            });
        }
        let result = f.call(&mut store, &args);
        let ctx = fenv.as_mut(&mut store);
        assert!(
            ctx.take_stdout().len() <= max_stdout,
            "stdout over its limit"
        );
        if result.is_err() || ctx.stop().is_some() {
            // The guest would be unwound here (proc_exit, output limit, ...).
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The fuzz targets on stable, in every `cargo test`: arbitrary bytes, and structurally
    //! valid but hostile values, with a bounded number of cases.

    use super::*;
    use bx3_protocol::mesh::Gossip;
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..max)
    }

    /// A valid envelope (right version) around arbitrary CBOR-ish bytes or a chosen body.
    fn enveloped(body: Vec<u8>) -> Vec<u8> {
        // {"v": 1, "body": <body>}
        let mut out = vec![0xa2, 0x61, b'v', 0x01, 0x64, b'b', b'o', b'd', b'y'];
        out.extend(body);
        out
    }

    fn hostile_announce() -> impl Strategy<Value = mesh::Announce> {
        (
            (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()),
            ".{0,40}",
            prop::collection::vec(".{0,20}", 0..4),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            "[a-zA-Z0-9]{1,12}",
        )
            .prop_map(
                |((total, busy, ram, avail), version, addrs, (seq, slots, cores), leader)| {
                    mesh::Announce {
                        version,
                        executors_total: total,
                        executors_busy: busy,
                        ram_per_executor_mb: ram,
                        available_ram_mb: avail,
                        min_free_ram_mb: ram,
                        leader: leader.parse().ok(),
                        addrs,
                        replica_seq: seq,
                        ram_slots: slots,
                        cpu_cores: cores,
                        limited_by: String::new(),
                    }
                },
            )
    }

    fn hostile_term() -> impl Strategy<Value = mesh::Term<NodeId>> {
        (any::<u64>(), "[a-zA-Z0-9]{1,30}").prop_map(|(epoch, candidate)| mesh::Term {
            epoch,
            candidate: candidate.parse().expect("alphanumeric"),
        })
    }

    /// A forged certificate: votes "signed" with random bytes by random voters.
    fn forged_cert() -> impl Strategy<Value = Vec<mesh::SignedVote<NodeId>>> {
        prop::collection::vec(
            (
                "[a-zA-Z0-9]{1,12}",
                prop::collection::vec(any::<u8>(), 0..80),
            )
                .prop_map(|(voter, sig)| mesh::SignedVote {
                    voter: voter.parse().expect("alphanumeric"),
                    sig: mesh::Signature(sig),
                }),
            0..8,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn wire_envelope_takes_any_bytes(data in bytes(512)) {
            wire_envelope(&data);
            wire_envelope(&enveloped(data));
        }

        #[test]
        fn gossip_takes_any_bytes(data in bytes(512)) {
            gossip(&data);
            gossip(&enveloped(data));
        }

        #[test]
        fn gossip_takes_hostile_messages(a in hostile_announce(), term in hostile_term(), seq in any::<u64>(), granted in any::<bool>(), cert in forged_cert()) {
            gossip(&mesh::encode_gossip(&Gossip::Announce(a)).expect("encodes"));
            let pos = mesh::LogPos { term: Some(term.clone()), seq };
            for m in [
                mesh::ElectionMessage::Heartbeat { term: term.clone(), pos: pos.clone(), cert },
                mesh::ElectionMessage::VoteRequest { term: term.clone(), pos },
                mesh::ElectionMessage::Vote { term, granted, sig: None },
            ] {
                gossip(&mesh::encode_gossip(&Gossip::Election(m)).expect("encodes"));
            }
        }

        #[test]
        fn rpc_takes_any_bytes(data in bytes(1024)) {
            rpc(&data);
            rpc(&enveloped(data));
        }

        #[test]
        fn codec_takes_any_bytes(data in bytes(256), len in any::<u32>(), small in 0u32..300) {
            codec(&data);
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend(&data);
            codec(&framed);
            let mut framed = small.to_be_bytes().to_vec();
            framed.extend(&data);
            codec(&framed);
        }

        #[test]
        fn executor_frames_take_any_bytes(data in bytes(512), len in 0u32..600) {
            executor_frame(&data);
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend(&data);
            executor_frame(&framed);
        }

        #[test]
        fn parse_dag_takes_any_text(text in ".{0,300}") {
            parse_dag(text.as_bytes());
        }

        #[test]
        fn planner_takes_hostile_specs_and_results(data in bytes(2048)) {
            planner(&data);
        }

        #[test]
        fn wasi_host_functions_take_any_pointers(data in bytes(2048)) {
            wasi_host(&data);
        }
    }

    /// A peer's `Submit` whose spec has an index out of range (the request that panicked the
    /// planner, and again after every restart) no longer decodes at all.
    #[test]
    fn a_submit_with_a_bad_index_does_not_decode() {
        let mut dag = parse("name: x\ntasks:\n  - {id: a, module: m.wasm}\n  - {id: b, module: m.wasm, inputs: [a], depends_on: [a]}\n").expect("valid");
        dag.tasks[1].inputs[0] = Input::Output(9);
        let req = Request::Submit {
            id: DagId::new(1, 1),
            spec: mesh::Spec {
                dag,
                modules: [("m.wasm".to_string(), "ab".repeat(32).parse().expect("hash"))].into(),
            },
            source: None,
        };
        let bytes = mesh::encode_rpc(&req).expect("encodes");
        let err = mesh::decode_rpc::<Request>(&bytes).expect_err("refused at decode");
        assert!(err.to_string().contains("task index 9"), "{err}");
        rpc(&bytes);
    }

    /// Writes the seed corpus of every target into `fuzz/corpus/` (well-formed messages,
    /// frames and DAG files for the fuzzer to mutate). Run by hand before a fuzz campaign:
    /// `cargo test -p bx3-node --lib write_seed_corpus -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus; run by hand"]
    fn write_seed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("corpus dir");
            std::fs::write(dir.join(name), data).expect("write seed");
        };
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut dags = Vec::new();
        for entry in std::fs::read_dir(repo.join("dags"))
            .expect("dags/")
            .flatten()
        {
            let path = entry.path();
            let text = std::fs::read_to_string(&path).expect("read");
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("dag")
                .to_string();
            write("parse_dag", &name, text.as_bytes());
            if let Ok(dag) = parse(&text) {
                dags.push(dag);
            }
        }
        write("parse_dag", "json.yaml", br#"{"name": "j", "tasks": [{"id": "a", "module": "m.wasm", "inputs": ["${b}"], "depends_on": ["b"]}, {"id": "b", "module": "m.wasm", "env": {"K": "V"}}]}"#);
        write("parse_dag", "anchors.yaml", b"name: x\ndefaults: {timeout: 5s, env: &e {A: b}}\ntasks:\n  - {id: a, module: m.wasm, env: *e, stdin: |\n      multi\n      line\n    }\n  - id: b\n    module: m.wasm\n    inputs: [\"$${a}\", a, 'q''s']\n    depends_on: [a]\n");

        // Every mesh message: the protocol's golden bytes (one file per variant).
        let golden = repo.join("protocol/tests/golden");
        let mut names: Vec<_> = std::fs::read_dir(&golden)
            .expect("protocol/tests/golden")
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for path in names {
            let stem = path
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
                .to_string();
            let text = std::fs::read_to_string(&path).expect("read golden");
            let bytes = hex::decode(text.split_whitespace().collect::<String>()).expect("hex");
            let target = if stem.starts_with("gossip-") {
                "gossip"
            } else {
                "rpc"
            };
            write(target, &stem, &bytes);
            write("wire_envelope", &stem, &bytes);
            if stem.starts_with("request-") {
                let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
                framed.extend(&bytes);
                write("codec", &stem, &framed);
            }
        }
        let frames = [
            frame::encode(&frame::Request {
                module_hash: "ab".repeat(32),
                argv: vec!["m.wasm".into(), "x".into()],
                env: vec![("K".into(), "V".into())],
                stdin: b"in".to_vec(),
                memory_bytes: 64 << 20,
                max_stdout: 1 << 20,
                max_stderr_tail: 4096,
            })
            .expect("encodes"),
            frame::encode(&frame::Response::Success {
                stdout: b"out".to_vec(),
                run_us: 5,
                stderr_tail: "note".into(),
            })
            .expect("encodes"),
            frame::encode(&frame::Response::Trap {
                message: "unreachable".into(),
                stderr_tail: "e".into(),
            })
            .expect("encodes"),
        ];
        for (i, f) in frames.iter().enumerate() {
            write("executor_frame", &format!("seed-{i}"), f);
        }
        // Structured targets: deterministic pseudo-random seeds.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..16 {
            let seed: Vec<u8> = (0..512)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            write("planner", &format!("seed-{i}"), &seed);
            write("wasi_host", &format!("seed-{i}"), &seed);
        }
    }

    /// The committed corpus (`fuzz/corpus/*`) runs through the targets here too.
    #[test]
    fn the_committed_corpus_passes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 8] = [
            ("wire_envelope", wire_envelope),
            ("gossip", gossip),
            ("rpc", rpc),
            ("codec", codec),
            ("executor_frame", executor_frame),
            ("parse_dag", parse_dag),
            ("planner", planner),
            ("wasi_host", wasi_host),
        ];
        let mut files = 0;
        for (name, target) in targets {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                if let Ok(data) = std::fs::read(entry.path()) {
                    target(&data);
                    files += 1;
                }
            }
        }
        eprintln!("{files} corpus files");
    }
}
