//! The remote index of a timeline: the one object that says which layer
//! objects exist and what a host needs to carry the timeline on. It is JSON
//! with a `version` field; [`RemoteIndex::from_json`] reads every version
//! this code has written (one so far) and refuses newer ones by name.
//!
//! Version 1:
//!
//! ```json
//! {
//!   "version": 1,
//!   "tenant_id": "<32 hex>", "timeline_id": "<32 hex>", "generation": 1,
//!   "disk_consistent_lsn": "0/16B3748", "gc_cutoff": "0/0", "next_layer_seq": 12,
//!   "ancestor": null | { "timeline_id": "<32 hex>", "lsn": "0/3000000" },
//!   "layers": { "<layer file name>": { "size": 123, "crc32c": 456, "generation": 1 }, … },
//!   "lsn_history": [ { "unix_secs": 1765000000, "lsn": "0/16B3748" }, … ],
//!   "tenant_config": { "<setting>": "<value>", … },
//!   "source": null | { "conninfo": "host=… (no password)", "slot": "…", "system_id": 7…, "pg_timeline": 1 }
//! }
//! ```
//!
//! `disk_consistent_lsn` is the LSN every record at or below which is in the
//! named layers: once this index is durable it is the timeline's
//! `remote_consistent_lsn`. `crc32c` covers a layer object's bytes and is
//! checked on download. `lsn_history` holds the time→LSN samples PITR uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use storage::lsn::Lsn;
use storage::repo::index::IndexFile;
use storage::repo::{TenantId, TimelineId};

use crate::error::{RemoteError, Result};
use crate::layout::Generation;

/// The version [`RemoteIndex::to_json`] writes.
pub const REMOTE_INDEX_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteIndex {
    pub version: u32,
    #[serde(with = "hex_id")]
    pub tenant_id: u128,
    #[serde(with = "hex_id")]
    pub timeline_id: u128,
    pub generation: Generation,
    #[serde(with = "lsn_text")]
    pub disk_consistent_lsn: Lsn,
    #[serde(with = "lsn_text")]
    pub gc_cutoff: Lsn,
    pub next_layer_seq: u64,
    pub ancestor: Option<RemoteAncestor>,
    pub layers: BTreeMap<String, RemoteLayer>,
    pub lsn_history: Vec<LsnSample>,
    pub tenant_config: BTreeMap<String, String>,
    pub source: Option<RemoteSource>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAncestor {
    #[serde(with = "hex_id")]
    pub timeline_id: u128,
    #[serde(with = "lsn_text")]
    pub lsn: Lsn,
}

/// One layer object: its bytes, their CRC32C, and the generation in its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteLayer {
    pub size: u64,
    pub crc32c: u32,
    pub generation: Generation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LsnSample {
    pub unix_secs: u64,
    #[serde(with = "lsn_text")]
    pub lsn: Lsn,
}

/// Where the timeline's WAL comes from. The connection string never holds a
/// password: the attaching host supplies its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSource {
    pub conninfo: String,
    pub slot: String,
    pub system_id: u64,
    pub pg_timeline: u32,
}

impl RemoteIndex {
    /// The remote index for a local index, given each of its layers' remote
    /// size, CRC32C and generation (`uploaded`; every layer the local index
    /// names must be there).
    pub fn from_local(
        tenant: TenantId,
        local: &IndexFile,
        generation: Generation,
        uploaded: &BTreeMap<String, RemoteLayer>,
        tenant_config: BTreeMap<String, String>,
        source: Option<RemoteSource>,
    ) -> std::result::Result<RemoteIndex, String> {
        let mut layers = BTreeMap::new();
        for (name, size) in &local.layers {
            let file_name = name.file_name();
            let remote = uploaded.get(&file_name).ok_or_else(|| format!("layer {file_name} is not uploaded"))?;
            if remote.size != *size {
                return Err(format!("layer {file_name} has {size} bytes locally but {} remotely", remote.size));
            }
            layers.insert(file_name, *remote);
        }
        Ok(RemoteIndex {
            version: REMOTE_INDEX_VERSION,
            tenant_id: tenant.0,
            timeline_id: local.timeline_id.0,
            generation,
            disk_consistent_lsn: local.disk_consistent_lsn,
            gc_cutoff: local.gc_cutoff,
            next_layer_seq: local.next_layer_seq,
            ancestor: local.ancestor.map(|(id, lsn)| RemoteAncestor { timeline_id: id.0, lsn }),
            layers,
            lsn_history: local.lsn_history.iter().map(|&(unix_secs, lsn)| LsnSample { unix_secs, lsn }).collect(),
            tenant_config,
            source,
        })
    }

    pub fn tenant(&self) -> TenantId {
        TenantId(self.tenant_id)
    }

    pub fn timeline(&self) -> TimelineId {
        TimelineId(self.timeline_id)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a remote index always serializes");
        out.push(b'\n');
        out
    }

    /// Reads an index object; `path` names it in errors.
    pub fn from_json(bytes: &[u8], path: &str) -> Result<RemoteIndex> {
        let bad = |reason: String| RemoteError::BadIndex { path: path.to_string(), reason };
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let VersionOnly { version } = serde_json::from_slice(bytes).map_err(|e| bad(format!("no version field: {e}")))?;
        match version {
            1 => serde_json::from_slice::<RemoteIndex>(bytes).map_err(|e| bad(format!("not a version 1 index: {e}"))),
            v => Err(bad(format!(
                "written in version {v}; this page server reads versions 1 to {REMOTE_INDEX_VERSION} (a newer page server wrote it)"
            ))),
        }
    }
}

/// Drops the password from a libpq connection string (`key=value` pairs or
/// a `postgres://` URL), so that it can be stored in the bucket.
pub fn conninfo_without_password(conninfo: &str) -> String {
    let trimmed = conninfo.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return match url::Url::parse(trimmed) {
            Ok(mut url) => {
                let _ = url.set_password(None);
                let pairs: Vec<(String, String)> =
                    url.query_pairs().filter(|(k, _)| k != "password").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                url.set_query(None);
                if !pairs.is_empty() {
                    url.query_pairs_mut().extend_pairs(pairs);
                }
                url.to_string()
            }
            Err(_) => String::new(),
        };
    }
    // key = value pairs; values may be single-quoted with \' and \\ escapes.
    let mut kept = Vec::new();
    let mut rest = trimmed;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        let mut value_rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        if let Some(quoted) = value_rest.strip_prefix('\'') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            value_rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = value_rest.find(char::is_whitespace).unwrap_or(value_rest.len());
            value = value_rest[..end].to_string();
            value_rest = &value_rest[end..];
        }
        if key != "password" {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
        rest = value_rest.trim_start();
    }
    kept.join(" ")
}

mod lsn_text {
    use super::*;
    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod hex_id {
    use super::*;
    pub fn serialize<S: Serializer>(id: &u128, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{id:032x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 32 {
            return Err(serde::de::Error::custom(format!("id {text:?} is not 32 hexadecimal digits")));
        }
        u128::from_str_radix(&text, 16).map_err(|_| serde::de::Error::custom(format!("id {text:?} is not 32 hexadecimal digits")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_dropped_from_conninfo() {
        assert_eq!(
            conninfo_without_password("host=127.0.0.1 port=5432 user=repl password=s3cret dbname=postgres"),
            "host='127.0.0.1' port='5432' user='repl' dbname='postgres'"
        );
        assert_eq!(conninfo_without_password("password = 'x' host=h"), "host='h'");
        assert_eq!(conninfo_without_password("host=h password='a b\\' c' user=u"), "host='h' user='u'");
        assert_eq!(
            conninfo_without_password("postgres://repl:s3cret@db.example:5433/postgres?sslmode=require&password=x"),
            "postgres://repl@db.example:5433/postgres?sslmode=require"
        );
    }
}
