//! The backup worker's passes on a tenants directory written by hand (an
//! index and the layer files it names), against a local-directory store:
//! uploads, the index after its layers, `remote_consistent_lsn`, deletions
//! only after a newer index, a deletion queue left by a crash, a layer that
//! left the local index mid-upload, a store that cannot be reached, and the
//! download of a tenant for attach (whole, checked, or not at all).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use remote::layout::{self, Generation, ObjectKind};
use remote::{RemoteIndex, RemoteStorage, RemoteStorageConfig};
use service::backup::BackupWorker;
use shared_mem::RemoteTable;
use storage::lsn::Lsn;
use storage::repo::index::IndexFile;
use storage::repo::{CrashPoints, LayerName, TenantId, TimelineId};

const TENANT: TenantId = TenantId(0xaaaa);
const TIMELINE: TimelineId = TimelineId(0xbbbb);

struct Setup {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    timeline_dir: PathBuf,
    storage: RemoteStorage,
    table: &'static RemoteTable,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let timeline_dir = data_dir.join("tenants").join(TENANT.to_string()).join("timelines").join(TIMELINE.to_string());
    std::fs::create_dir_all(&timeline_dir).unwrap();
    let storage = RemoteStorageConfig::parse(&format!("file://{}/bucket", dir.path().display()), "").unwrap().open().unwrap();
    let table: &'static RemoteTable = Box::leak(Box::default());
    Setup { _dir: dir, data_dir, timeline_dir, storage, table }
}

fn worker(s: &Setup) -> BackupWorker {
    BackupWorker::new(s.data_dir.join("tenants"), s.data_dir.join("backup"), s.storage.clone(), Generation::FIRST, s.table, BTreeMap::new())
}

fn layer(seq: u64) -> LayerName {
    LayerName::parse(&format!(
        "D0_000000067F000000050000400C0000000000-300000000000000000000000000000000002_0000000037000001-00000000453BF1B1_{seq:016X}"
    ))
    .unwrap()
}

/// Writes layer files `seqs` (distinct contents) and an index naming them.
fn write_local(dir: &Path, seqs: &[u64], disk_consistent: u64) {
    let mut layers = Vec::new();
    for &seq in seqs {
        let name = layer(seq);
        let path = dir.join(name.file_name());
        if !path.exists() {
            std::fs::write(&path, vec![seq as u8; 1000 + seq as usize]).unwrap();
        }
        layers.push((name, 1000 + seq));
    }
    let index = IndexFile {
        timeline_id: TIMELINE,
        ancestor: None,
        disk_consistent_lsn: Lsn(disk_consistent),
        gc_cutoff: Lsn(0),
        next_layer_seq: 100,
        layers,
        lsn_history: vec![(1_765_000_000, Lsn(disk_consistent))],
    };
    index.write(dir, false, &CrashPoints::default()).unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn remote_index(s: &Setup, rt: &tokio::runtime::Runtime) -> RemoteIndex {
    let path = layout::index_path(TENANT, TIMELINE, Generation::FIRST);
    RemoteIndex::from_json(&rt.block_on(s.storage.get_bytes(&path)).unwrap(), path.as_ref()).unwrap()
}

/// Layer objects in the bucket, by seq.
fn remote_layers(s: &Setup, rt: &tokio::runtime::Runtime) -> Vec<u64> {
    let mut seqs: Vec<u64> = rt
        .block_on(s.storage.list(&layout::timeline_prefix(TENANT, TIMELINE)))
        .unwrap()
        .iter()
        .filter_map(|o| match layout::parse_object_name(o.path.filename().unwrap()) {
            Some(ObjectKind::Layer(name, _)) => Some(name.seq),
            _ => None,
        })
        .collect();
    seqs.sort();
    seqs
}

#[test]
fn layers_go_up_before_their_index_and_leave_after_a_newer_one() {
    let s = setup();
    let rt = rt();
    write_local(&s.timeline_dir, &[1, 2, 3], 0x100);
    let mut w = worker(&s);
    let summary = rt.block_on(w.pass(&|_| {}, &|| false)).unwrap();
    assert_eq!((summary.timelines, summary.uploaded_layers, summary.uploaded_indexes, summary.failed), (1, 3, 1, 0));
    let index = remote_index(&s, &rt);
    assert_eq!(index.disk_consistent_lsn, Lsn(0x100));
    assert_eq!(index.layers.len(), 3);
    assert_eq!(index.layers[&layer(2).file_name()].crc32c, crc32c::crc32c(&[2u8; 1002]));
    assert_eq!(s.table.find(TENANT.0, TIMELINE.0).unwrap().remote_consistent_lsn(), 0x100);

    // Nothing changed: nothing is uploaded.
    let summary = rt.block_on(w.pass(&|_| {}, &|| false)).unwrap();
    assert_eq!((summary.uploaded_layers, summary.uploaded_indexes), (0, 0));

    // "Compaction": layers 1 and 2 replaced by 4.
    write_local(&s.timeline_dir, &[3, 4], 0x200);
    let summary = rt.block_on(w.pass(&|_| {}, &|| false)).unwrap();
    assert_eq!((summary.uploaded_layers, summary.uploaded_indexes, summary.deleted), (1, 1, 2));
    assert_eq!(remote_layers(&s, &rt), [3, 4]);
    assert_eq!(remote_index(&s, &rt).disk_consistent_lsn, Lsn(0x200));
    assert_eq!(s.table.find(TENANT.0, TIMELINE.0).unwrap().remote_consistent_lsn(), 0x200);
    assert!(!s.data_dir.join("backup").join(format!("{TENANT}_{TIMELINE}.deletions")).exists());

    // A new worker (a restart) finds the remote index and publishes it at once.
    let table_before = s.table.find(TENANT.0, TIMELINE.0).unwrap().remote_consistent_lsn();
    let mut again = worker(&s);
    let summary = rt.block_on(again.pass(&|_| {}, &|| false)).unwrap();
    assert_eq!((summary.uploaded_layers, summary.uploaded_indexes), (0, 0));
    assert_eq!(table_before, 0x200);
}

#[test]
fn a_deletion_queue_left_by_a_crash_deletes_only_what_no_durable_index_names() {
    let s = setup();
    let rt = rt();
    write_local(&s.timeline_dir, &[1, 2], 0x100);
    rt.block_on(worker(&s).pass(&|_| {}, &|| false)).unwrap();
    // A crash after the queue was written, before the index that drops 1
    // and 2 went up: the queue names objects the durable index still names,
    // and an object (seq 9) that no index names.
    let stray = layout::layer_path(TENANT, TIMELINE, &layer(9), Generation::FIRST);
    rt.block_on(s.storage.put_bytes(&stray, bytes::Bytes::from_static(b"x"))).unwrap();
    let queue = s.data_dir.join("backup").join(format!("{TENANT}_{TIMELINE}.deletions"));
    std::fs::create_dir_all(queue.parent().unwrap()).unwrap();
    let entries: Vec<serde_json::Value> =
        [1u64, 2, 9].iter().map(|seq| serde_json::json!({ "name": layer(*seq).file_name(), "generation": 1 })).collect();
    std::fs::write(&queue, serde_json::to_vec(&entries).unwrap()).unwrap();
    let summary = rt.block_on(worker(&s).pass(&|_| {}, &|| false)).unwrap();
    // Seq 9 goes as an orphan and again from the queue (a repeated delete succeeds).
    assert!(summary.deleted >= 1);
    assert_eq!(remote_layers(&s, &rt), [1, 2]);
    assert!(!queue.exists());
}

#[test]
fn layers_a_stopped_run_uploaded_without_their_index_are_removed_by_the_next_run() {
    let s = setup();
    let rt = rt();
    write_local(&s.timeline_dir, &[1, 2], 0x100);
    rt.block_on(worker(&s).pass(&|_| {}, &|| false)).unwrap();
    // A run stopped after uploading layer 7 and before the index naming it;
    // another generation's layer object is left alone.
    for (seq, generation) in [(7, Generation::FIRST), (8, Generation(2))] {
        let path = layout::layer_path(TENANT, TIMELINE, &layer(seq), generation);
        rt.block_on(s.storage.put_bytes(&path, bytes::Bytes::from_static(b"x"))).unwrap();
    }
    let check = rt.block_on(remote::check::check_timeline(&s.storage, TENANT, TIMELINE, true)).unwrap();
    assert_eq!(check.orphans.len(), 2, "{check:?}");
    assert!(check.missing.is_empty() && check.corrupt.is_empty());
    let summary = rt.block_on(worker(&s).pass(&|_| {}, &|| false)).unwrap();
    assert_eq!(summary.deleted, 1);
    assert_eq!(remote_layers(&s, &rt), [1, 2, 8]);
    // The checker sees a damaged and a missing layer.
    rt.block_on(s.storage.delete(&layout::layer_path(TENANT, TIMELINE, &layer(8), Generation(2)))).unwrap();
    rt.block_on(
        s.storage.put_bytes(&layout::layer_path(TENANT, TIMELINE, &layer(1), Generation::FIRST), bytes::Bytes::from(vec![0u8; 1001])),
    )
    .unwrap();
    rt.block_on(s.storage.delete(&layout::layer_path(TENANT, TIMELINE, &layer(2), Generation::FIRST))).unwrap();
    let checks = rt.block_on(remote::check::check_tenant(&s.storage, TENANT, true)).unwrap();
    assert_eq!(checks.len(), 1);
    assert_eq!((checks[0].missing.len(), checks[0].corrupt.len(), checks[0].orphans.len()), (1, 1, 0), "{:?}", checks[0]);
    assert!(checks[0].corrupt[0].contains("CRC32C"));
    // Without reading contents, only sizes count: the damaged layer has the right size.
    let quick = rt.block_on(remote::check::check_tenant(&s.storage, TENANT, false)).unwrap();
    assert_eq!(quick[0].corrupt.len(), 0);
}

#[test]
fn a_layer_gone_locally_waits_for_the_next_pass_and_unreachable_storage_is_retried() {
    let s = setup();
    let rt = rt();
    write_local(&s.timeline_dir, &[1, 2], 0x100);
    std::fs::remove_file(s.timeline_dir.join(layer(2).file_name())).unwrap();
    let mut w = worker(&s);
    let summary = rt.block_on(w.pass(&|_| {}, &|| false)).unwrap();
    assert_eq!((summary.failed, summary.uploaded_indexes), (1, 0));
    let status = s.table.statuses().into_iter().next().unwrap();
    assert!(status.last_error.contains("left the local index"), "{}", status.last_error);
    assert_eq!(status.remote_consistent_lsn, 0);
    // The newer local index (what compaction would have written) goes up
    // once the backoff has passed.
    write_local(&s.timeline_dir, &[1, 3], 0x200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let summary = rt.block_on(w.pass(&|_| {}, &|| false)).unwrap();
        if summary.uploaded_indexes == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the timeline was not retried");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(remote_layers(&s, &rt), [1, 3]);
    assert_eq!(s.table.statuses()[0].last_error, "");

    // A store nobody listens on: errors, counted, shown, never a panic.
    let port = pageserver_harness::free_port();
    let unreachable = RemoteStorageConfig::parse(
        "s3://b/p",
        &format!("endpoint=http://127.0.0.1:{port},region=us-east-1,access_key_id=a,secret_access_key=b"),
    )
    .unwrap()
    .open()
    .unwrap();
    let table: &'static RemoteTable = Box::leak(Box::default());
    let mut w =
        BackupWorker::new(s.data_dir.join("tenants"), s.data_dir.join("backup2"), unreachable, Generation::FIRST, table, BTreeMap::new());
    let summary = rt.block_on(w.pass(&|_| {}, &|| false)).unwrap();
    assert_eq!(summary.failed, 1);
    let status = &table.statuses()[0];
    assert_eq!((status.errors, status.remote_consistent_lsn), (1, 0));
    assert!(status.last_error.contains("object storage get"), "{}", status.last_error);
}

#[test]
fn a_tenant_downloads_whole_into_an_empty_data_dir_or_not_at_all() {
    let s = setup();
    let rt = rt();
    write_local(&s.timeline_dir, &[1, 2, 3], 0x300);
    let source = serde_json::json!({
        "conninfo": "host=10.0.0.1 user=repl password=secret",
        "slot": "slot_x", "system_id": 42, "pg_timeline": 1, "start_lsn": 0, "state": "active"
    });
    let sources = s.data_dir.join("tenants").join(TENANT.to_string()).join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    std::fs::write(sources.join(format!("{TIMELINE}.json")), serde_json::to_vec(&source).unwrap()).unwrap();
    rt.block_on(worker(&s).pass(&|_| {}, &|| false)).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let progress = std::sync::Mutex::new(Vec::new());
    let activity = |text: &str| progress.lock().unwrap().push(text.to_string());
    let report = rt.block_on(service::attach::download_tenant(&s.storage, fresh.path(), TENANT, None, &activity)).unwrap();
    assert_eq!((report.timelines, report.layers, report.bytes), (1, 3, 1001 + 1002 + 1003));
    assert!(progress.lock().unwrap().last().unwrap().starts_with("attached tenant"));
    let dir = fresh.path().join("tenants").join(TENANT.to_string());
    let timeline_dir = dir.join("timelines").join(TIMELINE.to_string());
    let original = IndexFile::read(&s.timeline_dir).unwrap();
    assert_eq!(IndexFile::read(&timeline_dir).unwrap(), original);
    for (name, _) in &original.layers {
        assert_eq!(
            std::fs::read(timeline_dir.join(name.file_name())).unwrap(),
            std::fs::read(s.timeline_dir.join(name.file_name())).unwrap()
        );
    }
    // The source comes back without its password, active; a given conninfo replaces it.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("sources").join(format!("{TIMELINE}.json"))).unwrap()).unwrap();
    assert_eq!(meta["conninfo"], "host='10.0.0.1' user='repl'");
    assert_eq!((meta["slot"].as_str(), meta["state"].as_str()), (Some("slot_x"), Some("active")));
    assert!(!fresh.path().join("attaching").join(TENANT.to_string()).exists());

    // Again: the tenant is there already.
    let err = rt.block_on(service::attach::download_tenant(&s.storage, fresh.path(), TENANT, None, &activity)).unwrap_err();
    assert!(matches!(err, service::error::ServiceError::AlreadyExists(_)), "{err}");
    // Unknown tenant: not found, nothing left behind.
    let other = tempfile::tempdir().unwrap();
    let err = rt.block_on(service::attach::download_tenant(&s.storage, other.path(), TenantId(0xcccc), None, &activity)).unwrap_err();
    assert!(matches!(err, service::error::ServiceError::NotFound(_)), "{err}");
    // A damaged layer object: refused, and no tenant directory appears.
    let victim = layout::layer_path(TENANT, TIMELINE, &layer(2), Generation::FIRST);
    rt.block_on(s.storage.put_bytes(&victim, bytes::Bytes::from(vec![9u8; 1002]))).unwrap();
    let err =
        rt.block_on(service::attach::download_tenant(&s.storage, other.path(), TENANT, Some("host=elsewhere"), &activity)).unwrap_err();
    assert!(matches!(err, service::error::ServiceError::Corrupt(_)), "{err}");
    assert!(!other.path().join("tenants").join(TENANT.to_string()).exists());
}
