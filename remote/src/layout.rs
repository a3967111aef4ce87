//! Object names in the bucket, under the configured prefix:
//!
//! ```text
//! tenants/<tenant id>/timelines/<timeline id>/<layer file name>-<generation>
//! tenants/<tenant id>/timelines/<timeline id>/index.json-<generation>
//! ```
//!
//! Ids are 32 hexadecimal digits, generations 8. Every name carries the
//! generation of the host that wrote it, so two hosts never write the same
//! object; layer objects are immutable, and each index object is written
//! once per generation and replaced only by the same generation. The index
//! names the layer objects (with their generations); nothing is found by
//! listing, except by the bucket checker.

use std::fmt;

use object_store::path::Path;
use storage::repo::layer_file::LayerName;
use storage::repo::{TenantId, TimelineId};

/// The writer's generation. The first host of a tenant writes generation 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u32);

impl Generation {
    pub const FIRST: Generation = Generation(1);
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

pub const INDEX_OBJECT_NAME: &str = "index.json";

pub fn tenant_prefix(tenant: TenantId) -> Path {
    Path::from(format!("tenants/{tenant}"))
}

pub fn timeline_prefix(tenant: TenantId, timeline: TimelineId) -> Path {
    Path::from(format!("tenants/{tenant}/timelines/{timeline}"))
}

pub fn layer_path(tenant: TenantId, timeline: TimelineId, layer: &LayerName, generation: Generation) -> Path {
    timeline_prefix(tenant, timeline).join(format!("{}-{generation}", layer.file_name()))
}

pub fn index_path(tenant: TenantId, timeline: TimelineId, generation: Generation) -> Path {
    timeline_prefix(tenant, timeline).join(format!("{INDEX_OBJECT_NAME}-{generation}"))
}

/// What an object's last name part says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Layer(LayerName, Generation),
    Index(Generation),
}

/// Parses the last part of an object's name (as [`layer_path`] and
/// [`index_path`] make them); `None` for anything else.
pub fn parse_object_name(name: &str) -> Option<ObjectKind> {
    let (stem, generation) = name.rsplit_once('-')?;
    if generation.len() != 8 {
        return None;
    }
    let generation = Generation(u32::from_str_radix(generation, 16).ok()?);
    if stem == INDEX_OBJECT_NAME {
        return Some(ObjectKind::Index(generation));
    }
    let layer = LayerName::parse(stem)?;
    (layer.file_name() == stem).then_some(ObjectKind::Layer(layer, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let tenant = TenantId(0xabc);
        let timeline = TimelineId(0x1234);
        let layer_name = "D0_000000067F000000050000400C0000000000-300000000000000000000000000000000002_0000000037000001-00000000453BF1B1_0000000000000005";
        let layer = LayerName::parse(layer_name).unwrap();
        let path = layer_path(tenant, timeline, &layer, Generation(7));
        assert_eq!(
            path.as_ref(),
            format!("tenants/00000000000000000000000000000abc/timelines/00000000000000000000000000001234/{layer_name}-00000007")
        );
        assert_eq!(parse_object_name(path.filename().unwrap()), Some(ObjectKind::Layer(layer, Generation(7))));
        let index = index_path(tenant, timeline, Generation::FIRST);
        assert_eq!(index.filename(), Some("index.json-00000001"));
        assert_eq!(parse_object_name(index.filename().unwrap()), Some(ObjectKind::Index(Generation(1))));
        for junk in ["index.json", "index.json-1", "index.json-0000000g", "foo-00000001", "index.json-00000001.tmp"] {
            assert_eq!(parse_object_name(junk), None, "{junk}");
        }
    }
}
