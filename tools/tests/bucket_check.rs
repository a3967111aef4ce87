//! `bucket_check` on a local-directory bucket: clean, then with a layer
//! missing, one damaged and an orphan, then with a bad setting.

use std::collections::BTreeMap;
use std::process::Command;

use bytes::Bytes;
use remote::index::REMOTE_INDEX_VERSION;
use remote::layout::{self, Generation};
use remote::{RemoteIndex, RemoteLayer, RemoteStorageConfig};
use storage::lsn::Lsn;
use storage::repo::{LayerName, TenantId, TimelineId};

fn layer(seq: u64) -> LayerName {
    LayerName::parse(&format!(
        "D0_000000067F000000050000400C0000000000-300000000000000000000000000000000002_0000000037000001-00000000453BF1B1_{seq:016X}"
    ))
    .unwrap()
}

fn run(url: &str, tenant: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bucket_check")).args(["--remote-storage", url, "--tenant", tenant]).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_checker_finds_missing_damaged_and_orphaned_objects() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/bucket", dir.path().display());
    let storage = RemoteStorageConfig::parse(&url, "").unwrap().open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (tenant, timeline) = (TenantId(0x1234), TimelineId(0x5678));
    let mut layers = BTreeMap::new();
    for seq in 1..=3u64 {
        let content = vec![seq as u8; 100 * seq as usize];
        rt.block_on(storage.put_bytes(&layout::layer_path(tenant, timeline, &layer(seq), Generation::FIRST), Bytes::from(content.clone())))
            .unwrap();
        layers.insert(
            layer(seq).file_name(),
            RemoteLayer { size: content.len() as u64, crc32c: crc32c::crc32c(&content), generation: Generation::FIRST },
        );
    }
    let index = RemoteIndex {
        version: REMOTE_INDEX_VERSION,
        tenant_id: tenant.0,
        timeline_id: timeline.0,
        generation: Generation::FIRST,
        disk_consistent_lsn: Lsn(0x1000),
        gc_cutoff: Lsn(0),
        next_layer_seq: 4,
        ancestor: None,
        layers,
        lsn_history: Vec::new(),
        tenant_config: BTreeMap::new(),
        source: None,
    };
    rt.block_on(storage.put_bytes(&layout::index_path(tenant, timeline, Generation::FIRST), Bytes::from(index.to_json()))).unwrap();

    let (code, out) = run(&url, &tenant.to_string());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 layers (600 bytes) checked") && out.ends_with("clean\n"), "{out}");

    rt.block_on(storage.delete(&layout::layer_path(tenant, timeline, &layer(1), Generation::FIRST))).unwrap();
    rt.block_on(storage.put_bytes(&layout::layer_path(tenant, timeline, &layer(2), Generation::FIRST), Bytes::from(vec![9u8; 200])))
        .unwrap();
    rt.block_on(storage.put_bytes(&layout::layer_path(tenant, timeline, &layer(4), Generation::FIRST), Bytes::from_static(b"x"))).unwrap();
    let (code, out) = run(&url, &tenant.to_string());
    assert_eq!(code, 1, "{out}");
    for expected in ["missing: ", "corrupt: ", "CRC32C", "orphan: ", "NOT clean"] {
        assert!(out.contains(expected), "{expected:?} not in {out}");
    }

    let (code, out) = run(&url, &TenantId(0x9999).to_string());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no timeline"), "{out}");
    let (code, out) = run("ftp://nowhere/x", &tenant.to_string());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unsupported scheme"), "{out}");
}
