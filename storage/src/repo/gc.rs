//! Garbage collection of layer files.
//!
//! The cutoff of a timeline is `min(last_record_lsn - gc_horizon, LSN as of
//! now - pitr_interval)`, never lowered. Reads below it fail with
//! [`RepoError::TooOld`](super::RepoError::TooOld). The retained LSNs are the
//! cutoff and the branch points of the timeline's children.
//!
//! A layer is removed only if it lies wholly below the cutoff (its LSN range
//! ends at or below it) and, for every retained LSN `r` at or above the
//! layer's start, image layers at LSNs in `[layer end - 1, r]` — not themselves
//! removed — cover its whole key range. A read at `r` (or any later LSN) then
//! stops at one of those images before reaching the layer. Deciding one layer
//! at a time against the images still kept makes the rule hold for the final
//! set. The cutoff is written in the same index that drops the layers (one
//! [`LayerSwap`], planned on a view by [`LayerWork::plan_gc`]).

use std::sync::Arc;

use super::layer_map::PersistentLayer;
use super::layer_work::{GcChange, LayerSwap, LayerWork};
use super::Result;
use crate::key::KeyRange;
use crate::lsn::Lsn;

/// What one GC of a timeline did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub cutoff: Lsn,
    pub layers_removed: usize,
    pub bytes_removed: u64,
    pub layers_kept: usize,
}

/// True if the union of `ranges` covers `target`.
pub(crate) fn covered(target: &KeyRange, mut ranges: Vec<KeyRange>) -> bool {
    ranges.sort();
    let mut reached = target.start;
    for range in ranges {
        if range.start > reached {
            break;
        }
        if range.end > reached {
            reached = range.end;
        }
        if reached >= target.end {
            return true;
        }
    }
    reached >= target.end
}

impl LayerWork<'_> {
    /// Chooses the layers that no read at or above `cutoff` (raised to the
    /// view's current cutoff), nor at any of `branch_points`, needs; returns
    /// the swap that drops them and raises the cutoff. The owner refuses it if
    /// the timeline's branch points changed in the meantime.
    pub fn plan_gc(&mut self, cutoff: Lsn, branch_points: &[Lsn]) -> Result<(LayerSwap, GcStats)> {
        let view = self.view;
        let cutoff = cutoff.max(view.gc_cutoff());
        let map = view.layers.read().clone();
        let mut retained: Vec<Lsn> = branch_points.to_vec();
        retained.push(cutoff);
        let mut candidates: Vec<&Arc<PersistentLayer>> = map.historic.iter().collect();
        candidates.sort_by_key(|l| (l.name.lsn_range.end, l.name.seq));
        let mut removed: Vec<Arc<PersistentLayer>> = Vec::new();
        for layer in candidates {
            let name = &layer.name;
            if name.lsn_range.end > cutoff {
                continue;
            }
            let last_lsn = Lsn(name.lsn_range.end.0 - 1);
            let needed = retained.iter().filter(|r| **r >= name.lsn_range.start).any(|r| {
                let images: Vec<KeyRange> = map
                    .historic
                    .iter()
                    .filter(|other| {
                        other.name.is_image()
                            && !Arc::ptr_eq(other, layer)
                            && !removed.iter().any(|gone| Arc::ptr_eq(gone, other))
                            && other.name.image_lsn() >= last_lsn
                            && other.name.image_lsn() <= *r
                    })
                    .map(|other| other.name.key_range)
                    .collect();
                !covered(&name.key_range, images)
            });
            if !needed {
                removed.push(layer.clone());
            }
        }
        let stats = GcStats {
            cutoff,
            layers_removed: removed.len(),
            bytes_removed: removed.iter().map(|l| l.file_size).sum(),
            layers_kept: map.historic.len() - removed.len(),
        };
        view.shared.crash.hit("gc: layers chosen")?;
        let swap = LayerSwap {
            generation: self.generation,
            remove: removed.iter().map(|l| l.name).collect(),
            add: Vec::new(),
            gc: Some(GcChange { cutoff, branch_points: branch_points.to_vec() }),
        };
        Ok((swap, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    fn key(n: u32) -> Key {
        Key { field6: n, ..Key::MIN }
    }

    #[test]
    fn coverage() {
        let target = KeyRange::new(key(10), key(20));
        assert!(covered(&target, vec![KeyRange::new(key(0), key(30))]));
        assert!(covered(&target, vec![KeyRange::new(key(15), key(20)), KeyRange::new(key(10), key(15))]));
        assert!(!covered(&target, vec![KeyRange::new(key(10), key(14)), KeyRange::new(key(15), key(20))]));
        assert!(!covered(&target, vec![KeyRange::new(key(11), key(20))]));
        assert!(!covered(&target, vec![]));
    }
}
