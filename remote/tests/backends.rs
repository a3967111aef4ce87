//! The same transfers against both backends the tests can run here: a local
//! directory and a real S3-compatible server (moto) on loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pageserver_harness::s3::S3Server;
use remote::index::{LsnSample, RemoteAncestor, RemoteSource};
use remote::layout::{self, Generation, ObjectKind};
use remote::{RemoteError, RemoteIndex, RemoteLayer, RemoteStorage, RemoteStorageConfig, Transferred};
use storage::lsn::Lsn;
use storage::repo::{LayerName, TenantId, TimelineId};

/// A store to test and what keeps it alive.
struct Backend {
    name: &'static str,
    storage: RemoteStorage,
    _dir: tempfile::TempDir,
    _s3: Option<S3Server>,
}

fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let local = RemoteStorageConfig::parse(&format!("file://{}/bucket", dir.path().display()), "").unwrap().open().unwrap();
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("pageserver").unwrap();
    let s3_storage = RemoteStorageConfig::parse(&s3.url("pageserver", "tests/prefix"), &s3.options()).unwrap().open().unwrap();
    vec![
        Backend { name: "local directory", storage: local, _dir: dir, _s3: None },
        Backend { name: "S3 (moto)", storage: s3_storage, _dir: tempfile::tempdir().unwrap(), _s3: Some(s3) },
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Bytes that do not repeat in any short period.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn layer() -> LayerName {
    LayerName::parse(
        "D0_000000067F000000050000400C0000000000-300000000000000000000000000000000002_0000000037000001-00000000453BF1B1_0000000000000005",
    )
    .unwrap()
}

const TENANT: TenantId = TenantId(0x1111_2222_3333_4444_5555_6666_7777_8888);
const TIMELINE: TimelineId = TimelineId(0xaaaa_bbbb_cccc_dddd_eeee_ffff_0000_1111);

fn no_download_left(local: &Path) {
    assert!(!local.exists(), "{} exists after a failed download", local.display());
    let partial = local.with_file_name(format!("{}.download", local.file_name().unwrap().to_string_lossy()));
    assert!(!partial.exists(), "{} was left behind", partial.display());
}

#[test]
fn files_go_up_and_come_back_checked_by_size_and_crc32c() {
    let rt = runtime();
    for backend in backends() {
        let storage = &backend.storage;
        let work = tempfile::tempdir().unwrap();
        // One PUT (a small file and one of the largest size that takes one),
        // and a multipart upload (several parts and a remainder).
        use remote::transfer::{CHUNK_BYTES, SINGLE_PUT_MAX};
        for (seed, len) in [(1, 1000), (2, SINGLE_PUT_MAX), (3, SINGLE_PUT_MAX + CHUNK_BYTES + 12345)] {
            let content = pattern(len, seed);
            let local = work.path().join(format!("layer-{seed}"));
            std::fs::write(&local, &content).unwrap();
            let path = layout::layer_path(TENANT, TIMELINE, &LayerName { seq: seed, ..layer() }, Generation::FIRST);
            let sent = rt.block_on(storage.upload_file(&local, &path)).unwrap();
            assert_eq!(sent, Transferred { size: len as u64, crc32c: crc32c::crc32c(&content) }, "{}", backend.name);
            assert_eq!(rt.block_on(storage.head(&path)).unwrap(), len as u64, "{}", backend.name);

            let back = work.path().join(format!("back-{seed}"));
            let got = rt.block_on(storage.download_file(&path, &back, Some(sent))).unwrap();
            assert_eq!(got, sent);
            assert!(std::fs::read(&back).unwrap() == content, "{}: downloaded bytes differ", backend.name);

            // The index says something else: refused, and nothing is left.
            for wrong in [
                Transferred { crc32c: sent.crc32c ^ 1, ..sent },
                Transferred { size: sent.size - 1, ..sent },
                Transferred { size: sent.size + 1, ..sent },
            ] {
                let target = work.path().join(format!("wrong-{seed}"));
                match rt.block_on(storage.download_file(&path, &target, Some(wrong))) {
                    Err(e @ RemoteError::Corrupt { .. }) => assert!(e.is_transient()),
                    other => panic!("{}: expected Corrupt for {wrong:?}, got {other:?}", backend.name),
                }
                no_download_left(&target);
            }
        }
    }
}

#[test]
fn missing_objects_are_reported_as_not_found() {
    let rt = runtime();
    for backend in backends() {
        let storage = &backend.storage;
        let path = layout::index_path(TENANT, TIMELINE, Generation(9));
        assert!(matches!(rt.block_on(storage.get_bytes(&path)), Err(RemoteError::NotFound { .. })), "{}", backend.name);
        assert!(matches!(rt.block_on(storage.head(&path)), Err(RemoteError::NotFound { .. })), "{}", backend.name);
        let work = tempfile::tempdir().unwrap();
        let target = work.path().join("missing");
        assert!(matches!(rt.block_on(storage.download_file(&path, &target, None)), Err(RemoteError::NotFound { .. })));
        no_download_left(&target);
        // Deleting what is not there succeeds: a deletion repeated after a crash.
        rt.block_on(storage.delete(&path)).unwrap();
        assert!(rt.block_on(storage.list(&layout::tenant_prefix(TENANT))).unwrap().is_empty(), "{}", backend.name);
    }
}

#[test]
fn an_index_and_its_layers_are_stored_listed_and_deleted() {
    let rt = runtime();
    for backend in backends() {
        let storage = &backend.storage;
        let work = tempfile::tempdir().unwrap();
        let mut layers = BTreeMap::new();
        for seq in 1..=3u64 {
            let name = LayerName { seq, ..layer() };
            let local = work.path().join(name.file_name());
            std::fs::write(&local, pattern(5000 + seq as usize, seq)).unwrap();
            let sent = rt.block_on(storage.upload_file(&local, &layout::layer_path(TENANT, TIMELINE, &name, Generation::FIRST))).unwrap();
            layers.insert(name.file_name(), RemoteLayer { size: sent.size, crc32c: sent.crc32c, generation: Generation::FIRST });
        }
        let index = RemoteIndex {
            version: remote::index::REMOTE_INDEX_VERSION,
            tenant_id: TENANT.0,
            timeline_id: TIMELINE.0,
            generation: Generation::FIRST,
            disk_consistent_lsn: Lsn(0x4533_F1B1),
            gc_cutoff: Lsn(0),
            next_layer_seq: 4,
            ancestor: Some(RemoteAncestor { timeline_id: 7, lsn: Lsn(0x100) }),
            layers,
            lsn_history: vec![LsnSample { unix_secs: 1_765_000_000, lsn: Lsn(0x4533_F1B1) }],
            tenant_config: BTreeMap::from([("pitr_interval".to_string(), "7d".to_string())]),
            source: Some(RemoteSource { conninfo: "host='h'".into(), slot: "s".into(), system_id: 42, pg_timeline: 1 }),
        };
        let index_path = layout::index_path(TENANT, TIMELINE, Generation::FIRST);
        rt.block_on(storage.put_bytes(&index_path, Bytes::from(index.to_json()))).unwrap();
        let back = RemoteIndex::from_json(&rt.block_on(storage.get_bytes(&index_path)).unwrap(), index_path.as_ref()).unwrap();
        assert_eq!(back, index, "{}", backend.name);

        let mut listed = rt.block_on(storage.list(&layout::timeline_prefix(TENANT, TIMELINE))).unwrap();
        listed.sort_by(|a, b| a.path.cmp(&b.path));
        let kinds: Vec<ObjectKind> = listed.iter().map(|o| layout::parse_object_name(o.path.filename().unwrap()).unwrap()).collect();
        assert_eq!(kinds.len(), 4, "{}: {listed:?}", backend.name);
        assert_eq!(kinds.iter().filter(|k| matches!(k, ObjectKind::Index(Generation::FIRST))).count(), 1);
        for object in &listed {
            if let Some(ObjectKind::Layer(name, _)) = layout::parse_object_name(object.path.filename().unwrap()) {
                assert_eq!(object.size, index.layers[&name.file_name()].size);
            }
        }
        for object in &listed {
            rt.block_on(storage.delete(&object.path)).unwrap();
        }
        assert!(rt.block_on(storage.list(&layout::tenant_prefix(TENANT))).unwrap().is_empty(), "{}", backend.name);
    }
}

#[test]
fn unreachable_storage_fails_quickly_with_a_transient_error() {
    let rt = runtime();
    // Nothing listens on this port.
    let port = pageserver_harness::free_port();
    let storage = RemoteStorageConfig::parse(
        "s3://nowhere/p",
        &format!("endpoint=http://127.0.0.1:{port},region=us-east-1,access_key_id=a,secret_access_key=b"),
    )
    .unwrap()
    .open()
    .unwrap();
    let started = Instant::now();
    let err =
        rt.block_on(storage.put_bytes(&layout::index_path(TENANT, TIMELINE, Generation::FIRST), Bytes::from_static(b"{}"))).unwrap_err();
    assert!(matches!(err, RemoteError::Store { .. }) && err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let text = err.to_string();
    assert!(!text.contains("secret_access_key=b") && !text.contains("access_key_id=a"), "{text}");
}
