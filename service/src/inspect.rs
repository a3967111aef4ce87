//! Inspection of a timeline for DBAs: any page, relation size or relation
//! list as of any retained LSN (`pageserver.get_page`, `rel_size`,
//! `list_relations`), the LSN of a point in time (`lsn_for_time`), and its
//! layer files (`pageserver.layers`). Checks the arguments a caller gives (fork names,
//! LSNs inside the retained history, blocks inside the relation) and reads
//! through the same `storage` calls as the page service, so what it shows
//! is what a compute node would get.

use crate::error::ServiceError;
use pg_constants::{FSM_FORKNUM, INIT_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use storage::commit_time::{self, CommitMark, TimePosition};
use storage::key::{Key, RelTag};
use storage::lsn::Lsn;
use storage::repo::{LayerKind, Timeline};

/// Layer files per `ListLayers` reply (each fits the command buffer).
pub const LAYERS_PER_PAGE: usize = 150;

/// One layer file as `pageserver.layers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRow {
    pub file_name: String,
    /// `image`, or `delta` with its level (`L0` flushed from memory, `L1`
    /// written by compaction).
    pub kind: String,
    pub key_start: String,
    pub key_end: String,
    pub lsn_start: String,
    pub lsn_end: String,
    pub bytes: u64,
    /// With object storage: whether the durable remote index names this
    /// file (at this size).
    pub remote: Option<bool>,
}

/// The timeline's own layer files (not its ancestors'), by file name,
/// from after `after` on, at most [`LAYERS_PER_PAGE`]; `remote`, with
/// object storage, the files the remote index names and their sizes.
pub fn list_layers(timeline: &Timeline, after: Option<&str>, remote: Option<&BTreeMap<String, u64>>) -> Vec<LayerRow> {
    let mut layers: Vec<(String, storage::repo::LayerName, u64)> =
        timeline.layer_files().into_iter().map(|(name, bytes)| (name.file_name(), name, bytes)).collect();
    layers.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    layers
        .into_iter()
        .filter(|(file_name, _, _)| after.is_none_or(|a| file_name.as_str() > a))
        .take(LAYERS_PER_PAGE)
        .map(|(file_name, name, bytes)| LayerRow {
            remote: remote.map(|r| r.get(&file_name) == Some(&bytes)),
            file_name,
            kind: match name.kind {
                LayerKind::Image => "image".to_string(),
                LayerKind::Delta => format!("delta L{}", name.level),
            },
            key_start: name.key_range.start.to_string(),
            key_end: name.key_range.end.to_string(),
            lsn_start: name.lsn_range.start.to_string(),
            lsn_end: name.lsn_range.end.to_string(),
            bytes,
        })
        .collect()
}

/// Relations per `ListRelations` reply (each fits the command buffer).
pub const RELATIONS_PER_PAGE: usize = 400;

/// A fork number from its name as PostgreSQL spells it (`main`, `fsm`,
/// `vm`, `init`), as `pageinspect`'s `get_raw_page` takes it.
pub fn parse_fork(name: &str) -> Result<u8, ServiceError> {
    match name.trim() {
        "main" => Ok(MAIN_FORKNUM),
        "fsm" => Ok(FSM_FORKNUM),
        "vm" => Ok(VISIBILITYMAP_FORKNUM),
        "init" => Ok(INIT_FORKNUM),
        other => Err(ServiceError::InvalidArgument(format!("invalid fork name \"{other}\": expected main, fsm, vm or init"))),
    }
}

pub fn fork_name(fork: u8) -> &'static str {
    match fork {
        MAIN_FORKNUM => "main",
        FSM_FORKNUM => "fsm",
        VISIBILITYMAP_FORKNUM => "vm",
        INIT_FORKNUM => "init",
        _ => "unknown",
    }
}

/// The LSN to read at: `lsn` (text such as `0/3000060`) if it lies in the
/// timeline's retained history — not below its GC cutoff, not past what it
/// has ingested — or the last ingested LSN when none is given.
pub fn read_lsn(timeline: &Timeline, lsn: Option<&str>) -> Result<Lsn, ServiceError> {
    let last = timeline.last_record_lsn();
    let Some(text) = lsn else { return Ok(last) };
    let lsn: Lsn =
        text.trim().parse().map_err(|_| ServiceError::InvalidArgument(format!("invalid LSN \"{text}\": expected the form 16/B374D848")))?;
    if lsn > last {
        return Err(ServiceError::InvalidArgument(format!(
            "LSN {lsn} is ahead of timeline {}: it has ingested up to {last}",
            timeline.id()
        )));
    }
    let cutoff = timeline.gc_cutoff();
    if lsn < cutoff {
        return Err(ServiceError::InvalidArgument(format!(
            "LSN {lsn} is before the retained history of timeline {}: garbage collection keeps versions from {cutoff} on",
            timeline.id()
        )));
    }
    if let Some((_, branch_lsn)) = timeline.ancestor() {
        // A branch's own history starts at its branch point; before it the
        // branch did not exist (read its ancestor instead).
        if lsn < branch_lsn {
            return Err(ServiceError::InvalidArgument(format!(
                "LSN {lsn} is before timeline {} branched at {branch_lsn}: read its ancestor there",
                timeline.id()
            )));
        }
    }
    Ok(lsn)
}

/// `pageserver.timeline_sizes`: one timeline's sizes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeRow {
    pub tenant: String,
    pub timeline: String,
    pub lsn: String,
    /// Bytes of every relation fork of every database at `lsn` (8 KiB a block).
    pub logical_size: u64,
    /// Bytes of the timeline's own layer files (not its ancestors').
    pub physical_size: u64,
}

/// What the timeline holds at its last ingested LSN, and on disk.
pub fn sizes(tenant: &str, timeline: &Timeline) -> Result<SizeRow, ServiceError> {
    let lsn = timeline.last_record_lsn();
    let mut logical_size = 0;
    for (spc, db) in timeline.list_dbs(lsn)? {
        logical_size += timeline.db_size(spc, db, lsn)?;
    }
    Ok(SizeRow {
        tenant: tenant.to_string(),
        timeline: timeline.id().to_string(),
        lsn: lsn.to_string(),
        logical_size,
        physical_size: timeline.layer_files().iter().map(|(_, bytes)| bytes).sum(),
    })
}

/// The oldest LSN `read_lsn` accepts: the GC cutoff, or the branch point.
pub fn oldest_lsn(timeline: &Timeline) -> Lsn {
    let cutoff = timeline.gc_cutoff();
    timeline.ancestor().map_or(cutoff, |(_, branch_lsn)| cutoff.max(branch_lsn))
}

/// What `pageserver.lsn_for_time` returns for one time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsnForTimeRow {
    pub lsn: String,
    /// `before_history`, `in_history`, `after_last_commit` or `no_commits`.
    pub position: String,
    /// The last commit at or before the time: its LSN and `xact_time`.
    pub commit_lsn: Option<String>,
    pub commit_time: Option<i64>,
    /// False while an `after_last_commit` answer may still change: the
    /// timeline streams and has not yet been shown to hold everything its
    /// primary wrote up to the time.
    pub settled: bool,
}

/// The LSN of `time` (a `TimestampTz`) in the timeline's retained history
/// (`storage::commit_time`); `caught_up` is a `TimestampTz` by which the
/// timeline held everything its primary had written (None: a timeline that
/// does not stream, whose history is complete).
pub fn lsn_for_time(timeline: &Timeline, time: i64, caught_up: Option<i64>) -> Result<LsnForTimeRow, ServiceError> {
    let now = commit_time::from_system_time(std::time::SystemTime::now());
    if time > now {
        return Err(ServiceError::InvalidArgument(format!(
            "{} is in the future: commits up to it have not happened yet",
            describe_time(time)
        )));
    }
    let last = timeline.last_record_lsn();
    let answer = commit_time::find_lsn_for_time(oldest_lsn(timeline), last, time, |lsn| {
        timeline
            .get(Key::latest_commit(), lsn)?
            .map(|v| CommitMark::decode(&v).map_err(|e| ServiceError::Corrupt(format!("timeline {}: {e}", timeline.id()))))
            .transpose()
    })?;
    let settled = answer.position != TimePosition::AfterLastCommit || caught_up.is_none_or(|c| c >= time);
    Ok(LsnForTimeRow {
        lsn: answer.lsn.to_string(),
        position: answer.position.as_str().to_string(),
        commit_lsn: answer.commit.map(|c| c.lsn.to_string()),
        commit_time: answer.commit.map(|c| c.time),
        settled,
    })
}

/// A `TimestampTz` as UTC text (RFC 3339), for messages.
pub fn describe_time(time: i64) -> String {
    humantime::format_rfc3339_micros(commit_time::to_system_time(time)).to_string()
}

/// The fork's size in blocks at `lsn`; `NotFound` if it does not exist then.
pub fn rel_size(timeline: &Timeline, rel: RelTag, lsn: Lsn) -> Result<u32, ServiceError> {
    timeline.get_rel_size(rel, lsn)?.ok_or_else(|| {
        ServiceError::NotFound(format!(
            "relation {}/{}/{} has no {} fork at {lsn} on timeline {}",
            rel.spc_node,
            rel.db_node,
            rel.rel_node,
            fork_name(rel.fork),
            timeline.id()
        ))
    })
}

/// The 8 KiB block `blkno` of the fork as of `lsn`.
pub fn get_page(timeline: &Timeline, rel: RelTag, blkno: u32, lsn: Lsn) -> Result<Vec<u8>, ServiceError> {
    let nblocks = rel_size(timeline, rel, lsn)?;
    if blkno >= nblocks {
        return Err(ServiceError::InvalidArgument(format!(
            "block number {blkno} is out of range: relation {}/{}/{} {} has {nblocks} blocks at {lsn}",
            rel.spc_node,
            rel.db_node,
            rel.rel_node,
            fork_name(rel.fork)
        )));
    }
    // A block inside the size that was never written reads as zeroes, as
    // PostgreSQL reads it.
    let page = timeline.get(Key::rel_block(rel, blkno), lsn)?;
    Ok(page.map_or_else(|| vec![0; pg_constants::BLCKSZ], |p| p.to_vec()))
}

/// One relation fork as `list_relations` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationRow {
    pub spc_node: u32,
    pub db_node: u32,
    pub rel_node: u32,
    pub fork: u8,
    pub blocks: u32,
}

/// The relation forks of every database at `lsn`, in (tablespace,
/// database, relation, fork) order, from after `after` on, at most
/// [`RELATIONS_PER_PAGE`].
pub fn list_relations(timeline: &Timeline, lsn: Lsn, after: Option<RelTag>) -> Result<Vec<RelationRow>, ServiceError> {
    let mut rels = Vec::new();
    let mut dbs = timeline.list_dbs(lsn)?;
    dbs.sort_unstable();
    for (spc_node, db_node) in dbs {
        if after.is_some_and(|a| (spc_node, db_node) < (a.spc_node, a.db_node)) {
            continue;
        }
        rels.extend(timeline.list_rels(spc_node, db_node, lsn)?);
    }
    let key = |r: &RelTag| (r.spc_node, r.db_node, r.rel_node, r.fork);
    rels.sort_unstable_by_key(key);
    rels.retain(|r| after.is_none_or(|a| key(r) > key(&a)));
    rels.truncate(RELATIONS_PER_PAGE);
    rels.into_iter()
        .map(|rel| {
            let blocks = timeline.get_rel_size(rel, lsn)?.unwrap_or(0);
            Ok(RelationRow { spc_node: rel.spc_node, db_node: rel.db_node, rel_node: rel.rel_node, fork: rel.fork, blocks })
        })
        .collect()
}
