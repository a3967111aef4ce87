//! The bucket checker: walks a tenant's objects and holds them to the
//! newest index of each timeline. Every layer the index names must exist
//! with the size and CRC32C the index records; every object under the
//! timeline that is neither that index nor a layer it names is an orphan
//! (a layer uploaded before a crash stopped its index, or a name nothing
//! here writes). Listing is used to find what no index names, never to
//! decide what exists for reading.

use std::collections::BTreeSet;

use storage::repo::{TenantId, TimelineId};

use crate::error::{RemoteError, Result};
use crate::index::RemoteIndex;
use crate::layout::{self, Generation, ObjectKind};
use crate::transfer::{ObjectInfo, RemoteStorage};

/// What the checker found for one timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineCheck {
    pub timeline: Option<TimelineId>,
    /// The index's generation and `disk_consistent_lsn`, if it has one.
    pub index: Option<(Generation, storage::lsn::Lsn)>,
    pub layers_checked: usize,
    pub bytes_checked: u64,
    /// Named by the index but absent.
    pub missing: Vec<String>,
    /// Present but not what the index says (size or CRC32C).
    pub corrupt: Vec<String>,
    /// Present but named by no index.
    pub orphans: Vec<ObjectInfo>,
    /// The index object could not be read.
    pub bad_index: Option<String>,
}

impl TimelineCheck {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.orphans.is_empty() && self.bad_index.is_none()
    }
}

/// Checks every timeline of `tenant`. With `verify_content`, each layer is
/// read whole and its CRC32C compared; otherwise only sizes are.
pub async fn check_tenant(storage: &RemoteStorage, tenant: TenantId, verify_content: bool) -> Result<Vec<TimelineCheck>> {
    let mut out = Vec::new();
    for prefix in storage.list_dirs(&layout::tenant_prefix(tenant).join("timelines")).await? {
        let name = prefix.filename().unwrap_or_default().to_string();
        let Ok(timeline) = name.parse::<TimelineId>() else {
            let objects = storage.list(&prefix).await?;
            out.push(TimelineCheck { orphans: objects, ..TimelineCheck::default() });
            continue;
        };
        out.push(check_timeline(storage, tenant, timeline, verify_content).await?);
    }
    Ok(out)
}

/// Checks one timeline against its newest index.
pub async fn check_timeline(
    storage: &RemoteStorage,
    tenant: TenantId,
    timeline: TimelineId,
    verify_content: bool,
) -> Result<TimelineCheck> {
    let objects = storage.list(&layout::timeline_prefix(tenant, timeline)).await?;
    let mut check = TimelineCheck { timeline: Some(timeline), ..TimelineCheck::default() };
    let newest = objects
        .iter()
        .filter_map(|o| match layout::parse_object_name(o.path.filename()?) {
            Some(ObjectKind::Index(generation)) => Some(generation),
            _ => None,
        })
        .max();
    let index = match newest {
        None => None,
        Some(generation) => {
            let path = layout::index_path(tenant, timeline, generation);
            match storage.get_bytes(&path).await.and_then(|bytes| RemoteIndex::from_json(&bytes, path.as_ref())) {
                Ok(index) => Some(index),
                Err(e @ (RemoteError::BadIndex { .. } | RemoteError::NotFound { .. })) => {
                    check.bad_index = Some(e.to_string());
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };
    let mut named = BTreeSet::new();
    if let Some(index) = &index {
        check.index = Some((index.generation, index.disk_consistent_lsn));
        named.insert(layout::index_path(tenant, timeline, index.generation));
        for (name, layer) in &index.layers {
            let Some(parsed) = storage::repo::LayerName::parse(name) else {
                check.corrupt.push(format!("{name}: not a layer name"));
                continue;
            };
            let path = layout::layer_path(tenant, timeline, &parsed, layer.generation);
            named.insert(path.clone());
            let Some(object) = objects.iter().find(|o| o.path == path) else {
                check.missing.push(path.to_string());
                continue;
            };
            check.layers_checked += 1;
            check.bytes_checked += object.size;
            if object.size != layer.size {
                check.corrupt.push(format!("{path}: {} bytes, the index says {}", object.size, layer.size));
            } else if verify_content {
                let bytes = storage.get_bytes(&path).await?;
                let crc = crc32c::crc32c(&bytes);
                if crc != layer.crc32c {
                    check.corrupt.push(format!("{path}: CRC32C {crc:08x}, the index says {:08x}", layer.crc32c));
                }
            }
        }
    }
    for object in objects {
        let is_index = matches!(layout::parse_object_name(object.path.filename().unwrap_or_default()), Some(ObjectKind::Index(_)));
        // Index objects (of older generations: history) are never orphans.
        if !named.contains(&object.path) && !is_index {
            check.orphans.push(object);
        }
    }
    Ok(check)
}
