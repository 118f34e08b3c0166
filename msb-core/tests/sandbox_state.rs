//! The sandbox state store under concurrent threads and processes, and its
//! crash and pid-reuse detection with real processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use msb_core::Error;
use msb_core::sandbox::state::{
    Backend, ProcessIdentity, STATE_FILE, SandboxName, SandboxStatus, StateStore,
};

/// Set in a re-executed copy of this test binary to select the child role.
const CHILD_ROLE_ENV: &str = "MSB_TEST_SANDBOX_STATE_CHILD";
const CHILD_HOME_ENV: &str = "MSB_TEST_SANDBOX_STATE_HOME";
const CHILD_INDEX_ENV: &str = "MSB_TEST_SANDBOX_STATE_INDEX";

fn name(s: &str) -> SandboxName {
    SandboxName::new(s).unwrap()
}

fn config() -> serde_json::Value {
    serde_json::json!({"image": "busybox", "cpus": 1})
}

fn sandbox_dirs(store: &StateStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn sandbox_two_threads_create_same_name() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    for round in 0..50 {
        let n = name(&format!("race-{round}"));
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<_> = (0..2)
            .map(|_| {
                let (store, n, barrier) = (store.clone(), n.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.create(&n, config(), Backend::Namespace)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let mut winners = Vec::new();
        for r in results {
            match r {
                Ok(res) => winners.push(res),
                Err(Error::SandboxAlreadyExists { name }) => assert_eq!(name, n.as_str()),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        let rec = winners.pop().unwrap().commit(std::process::id()).unwrap();
        assert_eq!(rec.status, SandboxStatus::Running);
    }
    assert_eq!(store.list().unwrap().len(), 50);
    assert!(sandbox_dirs(&store).iter().all(|d| d.starts_with("race-")));
}

/// The child role of [`sandbox_two_processes_create_same_name`]: waits for
/// the parent's go file, creates the sandbox, and writes its outcome.
fn child_create(home: &Path, index: &str) {
    let go = home.join("go");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !go.exists() {
        assert!(Instant::now() < deadline, "no go signal");
        std::thread::yield_now();
    }
    let store = StateStore::open(home).unwrap();
    let outcome = match store.create(&name("shared"), config(), Backend::Microvm) {
        Ok(reservation) => {
            reservation.commit(std::process::id()).unwrap();
            "won".to_owned()
        }
        Err(Error::SandboxAlreadyExists { name }) => format!("exists {name}"),
        Err(e) => format!("error {e}"),
    };
    std::fs::write(home.join(format!("result-{index}")), outcome).unwrap();
}

#[test]
fn sandbox_two_processes_create_same_name() {
    if std::env::var_os(CHILD_ROLE_ENV).is_some() {
        let home = std::env::var_os(CHILD_HOME_ENV).unwrap();
        let index = std::env::var(CHILD_INDEX_ENV).unwrap();
        child_create(Path::new(&home), &index);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for round in 0..5 {
        let home = tempfile::tempdir().unwrap();
        let mut children: Vec<_> = (0..2)
            .map(|i| {
                Command::new(&exe)
                    .args([
                        "--exact",
                        "sandbox_two_processes_create_same_name",
                        "--test-threads=1",
                    ])
                    .env(CHILD_ROLE_ENV, "create")
                    .env(CHILD_HOME_ENV, home.path())
                    .env(CHILD_INDEX_ENV, i.to_string())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Let both children start and reach the wait before signalling.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(home.path().join("go"), b"").unwrap();
        for child in &mut children {
            assert!(child.wait().unwrap().success());
        }
        let mut outcomes: Vec<String> = (0..2)
            .map(|i| std::fs::read_to_string(home.path().join(format!("result-{i}"))).unwrap())
            .collect();
        outcomes.sort();
        assert_eq!(outcomes, ["exists shared", "won"], "round {round}");
        let store = StateStore::open(home.path()).unwrap();
        assert_eq!(sandbox_dirs(&store), ["shared"]);
        let rec = store.get(&name("shared")).unwrap().unwrap();
        assert_eq!(rec.backend, Backend::Microvm);
        // The winner has exited: its sandbox is crashed, never running.
        assert_eq!(
            store.status(&name("shared")).unwrap(),
            SandboxStatus::Crashed
        );
    }
}

#[test]
fn sandbox_dropped_reservation_leaves_no_dir() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    let n = name("dropped");
    let res = store.create(&n, config(), Backend::Namespace).unwrap();
    assert!(res.dir().join(STATE_FILE).is_file());
    assert_eq!(store.status(&n).unwrap(), SandboxStatus::Creating);
    // While it is being created, the name is taken and cannot be removed.
    assert!(matches!(
        store.create(&n, config(), Backend::Namespace),
        Err(Error::SandboxAlreadyExists { .. })
    ));
    assert!(matches!(
        store.remove(&n),
        Err(Error::SandboxStillRunning { .. })
    ));
    drop(res);
    assert!(store.get(&n).unwrap().is_none());
    assert!(
        sandbox_dirs(&store).is_empty(),
        "{:?}",
        sandbox_dirs(&store)
    );
    // The name is free again.
    store
        .create(&n, config(), Backend::Namespace)
        .unwrap()
        .abandon()
        .unwrap();
    assert!(sandbox_dirs(&store).is_empty());
}

#[test]
fn sandbox_crash_detection_after_kill_9() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    let n = name("crashy");
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let rec = store
        .create(&n, config(), Backend::Namespace)
        .unwrap()
        .commit(child.id())
        .unwrap();
    assert_eq!(rec.pid, Some(child.id()));
    assert!(rec.start_time.is_some());
    assert_eq!(store.status(&n).unwrap(), SandboxStatus::Running);

    // Killed but not yet reaped (a zombie): already not running.
    child.kill().unwrap(); // SIGKILL
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.status(&n).unwrap() != SandboxStatus::Crashed {
        assert!(Instant::now() < deadline, "zombie still reported running");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait().unwrap();
    assert_eq!(store.status(&n).unwrap(), SandboxStatus::Crashed);
    // The stored status is unchanged; only the live status says crashed.
    assert_eq!(
        store.get(&n).unwrap().unwrap().status,
        SandboxStatus::Running
    );
    assert!(
        store
            .list()
            .unwrap()
            .iter()
            .all(|r| r.live_status() == SandboxStatus::Crashed)
    );
    store.remove(&n).unwrap();
    assert!(store.get(&n).unwrap().is_none());
}

#[test]
fn sandbox_pid_reuse_detected_by_start_time() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    let n = name("reused");
    let me = ProcessIdentity::current().unwrap();
    let fake = ProcessIdentity {
        start_time: me.start_time + 1,
        ..me
    };
    store
        .create(&n, config(), Backend::Namespace)
        .unwrap()
        .commit_process(fake)
        .unwrap();
    // The pid is alive (it is this process) but started at another time.
    assert_eq!(store.status(&n).unwrap(), SandboxStatus::Crashed);
    store.set_running_process(&n, me).unwrap();
    assert_eq!(store.status(&n).unwrap(), SandboxStatus::Running);
}

#[test]
fn sandbox_remove_refuses_while_alive() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    let n = name("alive");
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    store
        .create(&n, config(), Backend::Namespace)
        .unwrap()
        .commit(child.id())
        .unwrap();
    match store.remove(&n) {
        Err(Error::SandboxStillRunning { name, pid }) => {
            assert_eq!(name, "alive");
            assert_eq!(pid, child.id());
        }
        other => panic!("expected SandboxStillRunning, got {other:?}"),
    }
    // A stopped record can be removed even if the process were still there.
    store.set_stopped(&n).unwrap();
    assert_eq!(store.status(&n).unwrap(), SandboxStatus::Stopped);
    store.set_running(&n, child.id()).unwrap();
    assert!(matches!(
        store.remove(&n),
        Err(Error::SandboxStillRunning { .. })
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    store.remove(&n).unwrap();
    assert!(matches!(
        store.remove(&n),
        Err(Error::SandboxNotFound { .. })
    ));
    assert!(matches!(
        store.set_stopped(&n),
        Err(Error::SandboxNotFound { .. })
    ));
}

#[test]
fn sandbox_existing_record_blocks_create_in_any_state() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    let n = name("taken");
    store
        .create(&n, config(), Backend::Namespace)
        .unwrap()
        .commit(std::process::id())
        .unwrap();
    for status in ["running", "stopped", "crashed"] {
        match status {
            "stopped" => {
                store.set_stopped(&n).unwrap();
            }
            "crashed" => {
                store
                    .set_running_process(
                        &n,
                        ProcessIdentity {
                            pid: 0,
                            start_time: 0,
                        },
                    )
                    .unwrap();
                assert_eq!(store.status(&n).unwrap(), SandboxStatus::Crashed);
            }
            _ => {}
        }
        let started = Instant::now();
        assert!(
            matches!(
                store.create(&n, config(), Backend::Namespace),
                Err(Error::SandboxAlreadyExists { .. })
            ),
            "{status}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    store.remove(&n).unwrap();
    store
        .create(&n, config(), Backend::Namespace)
        .unwrap()
        .commit(std::process::id())
        .unwrap();
}

#[test]
fn sandbox_corrupt_state_is_typed_and_skipped_by_list() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    for n in ["good-a", "bad", "good-b"] {
        store
            .create(&name(n), config(), Backend::Namespace)
            .unwrap()
            .commit(std::process::id())
            .unwrap();
    }
    let bad = name("bad");
    let bad_file = store.sandbox_dir(&bad).join(STATE_FILE);
    std::fs::write(&bad_file, b"{\"version\": 1, \"name\": ").unwrap();
    match store.get(&bad) {
        Err(Error::CorruptSandboxState { name, path, .. }) => {
            assert_eq!(name, "bad");
            assert_eq!(path, bad_file);
        }
        other => panic!("expected CorruptSandboxState, got {other:?}"),
    }
    assert!(matches!(
        store.status(&bad),
        Err(Error::CorruptSandboxState { .. })
    ));
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(listed, ["good-a", "good-b"]);
    // A corrupt record still holds its name, and can be removed.
    assert!(matches!(
        store.create(&bad, config(), Backend::Namespace),
        Err(Error::SandboxAlreadyExists { .. })
    ));
    store.remove(&bad).unwrap();
    assert!(store.get(&bad).unwrap().is_none());
}

#[test]
fn sandbox_concurrent_updates_and_remove_do_not_interleave() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    let n = name("busy");
    store
        .create(&n, config(), Backend::Namespace)
        .unwrap()
        .commit(std::process::id())
        .unwrap();
    store.set_stopped(&n).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (store, n) = (store.clone(), n.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let r = if i == 0 {
                        store.remove(&n)
                    } else {
                        store.set_stopped(&n).map(drop)
                    };
                    match r {
                        Ok(()) | Err(Error::SandboxNotFound { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    match store.get(&n) {
                        Ok(_) => {}
                        Err(e) => panic!("read saw a broken record: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.get(&n).unwrap().is_none());
    assert!(
        sandbox_dirs(&store).is_empty(),
        "{:?}",
        sandbox_dirs(&store)
    );
}
