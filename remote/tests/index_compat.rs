//! Remote index compatibility: every version ever written stays readable.
//! `data/index_v<N>.json` is an index as version N wrote it, checked in
//! when version N was made; each must keep parsing to the same values. The
//! newest one must also be exactly what the writer produces today, so a
//! change to the format shows up here and gets a new version (and fixture).

use std::collections::BTreeMap;

use remote::index::{LsnSample, RemoteAncestor, RemoteSource, REMOTE_INDEX_VERSION};
use remote::{Generation, RemoteError, RemoteIndex, RemoteLayer};
use storage::lsn::Lsn;

const V1: &str = include_str!("data/index_v1.json");

fn v1_values() -> RemoteIndex {
    RemoteIndex {
        version: 1,
        tenant_id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        timeline_id: 0xfedc_ba98_7654_3210_fedc_ba98_7654_3210,
        generation: Generation(3),
        disk_consistent_lsn: Lsn(0x1_6B37_4D48),
        gc_cutoff: Lsn(0x1_0000_0000),
        next_layer_seq: 17,
        ancestor: Some(RemoteAncestor { timeline_id: 0x42, lsn: Lsn(0x300_0000) }),
        layers: BTreeMap::from([
            (
                "D0_000000067F000000050000400C0000000000-300000000000000000000000000000000002_0000000037000001-00000000453BF1B1_0000000000000005"
                    .to_string(),
                RemoteLayer { size: 36_646_006, crc32c: 0xdead_beef, generation: Generation(1) },
            ),
            (
                "I_000000067F000000050000400C0000000000-000000067F000000050000400C00000199D7_0000000033000028_0000000000000000".to_string(),
                RemoteLayer { size: 39_018_026, crc32c: 7, generation: Generation(3) },
            ),
        ]),
        lsn_history: vec![
            LsnSample { unix_secs: 1_765_000_000, lsn: Lsn(0x1_0000_0000) },
            LsnSample { unix_secs: 1_765_000_060, lsn: Lsn(0x1_6B37_4D48) },
        ],
        tenant_config: BTreeMap::from([("gc_horizon".to_string(), "64MB".to_string()), ("pitr_interval".to_string(), "7d".to_string())]),
        source: Some(RemoteSource {
            conninfo: "host='10.0.0.5' port='5432' user='replicator'".to_string(),
            slot: "pageserver_fedcba9876543210fedcba9876543210".to_string(),
            system_id: 7_300_000_000_000_000_001,
            pg_timeline: 1,
        }),
    }
}

#[test]
fn version_1_reads_as_written() {
    assert_eq!(RemoteIndex::from_json(V1.as_bytes(), "index_v1.json").unwrap(), v1_values());
}

#[test]
fn the_writer_writes_the_newest_fixture_exactly() {
    assert_eq!(REMOTE_INDEX_VERSION, 1, "a new version needs its own fixture and a reader case");
    assert_eq!(String::from_utf8(v1_values().to_json()).unwrap(), V1);
}

#[test]
fn newer_and_damaged_indexes_are_refused_by_name() {
    let newer = V1.replacen("\"version\": 1", "\"version\": 2", 1);
    let reason = |text: &str| match RemoteIndex::from_json(text.as_bytes(), "tenants/x/index.json-00000003") {
        Err(RemoteError::BadIndex { path, reason }) => {
            assert_eq!(path, "tenants/x/index.json-00000003");
            reason
        }
        other => panic!("expected BadIndex, got {other:?}"),
    };
    assert!(reason(&newer).contains("written in version 2"), "{}", reason(&newer));
    assert!(reason("{}").contains("no version field"));
    assert!(reason(&V1[..V1.len() / 2]).contains("no version field"));
    assert!(reason(&V1.replacen("\"gc_cutoff\"", "\"gc_cutof\"", 1)).contains("not a version 1 index"));
    assert!(reason(&V1.replacen("\"0/3000000\"", "\"0x3000000\"", 1)).contains("invalid LSN"));
}
