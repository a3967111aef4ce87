//! Commit times: which LSN a point in time corresponds to.
//!
//! Ingest keeps one extra key, [`Key::latest_commit`](crate::key::Key::latest_commit):
//! at the end LSN of every commit record it writes a [`CommitMark`] — that
//! record's LSN and `xact_time`, and the latest commit time seen so far.
//! Every version is a whole value (no redo), so compaction, GC, branches and
//! object storage treat it like any other key, and a read at LSN `L` gives
//! the newest commit at or below `L`.
//!
//! The latest time so far never decreases along the WAL, even where commit
//! times do (a backend takes its commit time before it inserts the record).
//! So [`find_lsn_for_time`] can bisect the LSNs for the first one whose
//! latest time is after the target: that is the first commit record after
//! the target, where PostgreSQL's `recovery_target_time` stops, and the
//! commit before it is the answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::lsn::Lsn;

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
const POSTGRES_EPOCH_UNIX_SECS: u64 = 946_684_800;

const MARK_VERSION: u8 = 1;
const MARK_SIZE: usize = 25;

/// The value of [`Key::latest_commit`](crate::key::Key::latest_commit).
/// Times are PostgreSQL `TimestampTz`: microseconds since 2000-01-01 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitMark {
    /// The end LSN of the commit record.
    pub lsn: Lsn,
    /// Its `xact_time`.
    pub time: i64,
    /// The latest `xact_time` of this and every earlier commit.
    pub max_time: i64,
}

/// A stored mark that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("commit mark of {len} bytes (version {version}) is not a version {MARK_VERSION} mark of {MARK_SIZE} bytes")]
pub struct BadCommitMark {
    pub len: usize,
    pub version: u8,
}

impl CommitMark {
    /// The mark after `previous` for a commit at `lsn` with `xact_time` `time`.
    pub fn next(previous: Option<CommitMark>, lsn: Lsn, time: i64) -> CommitMark {
        let max_time = previous.map_or(time, |p| p.max_time.max(time));
        CommitMark { lsn, time, max_time }
    }

    /// `version u8 | lsn u64 | time i64 | max_time i64`, little-endian.
    pub fn encode(&self) -> [u8; MARK_SIZE] {
        let mut out = [0u8; MARK_SIZE];
        out[0] = MARK_VERSION;
        out[1..9].copy_from_slice(&self.lsn.0.to_le_bytes());
        out[9..17].copy_from_slice(&self.time.to_le_bytes());
        out[17..25].copy_from_slice(&self.max_time.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CommitMark, BadCommitMark> {
        let version = bytes.first().copied().unwrap_or(0);
        if bytes.len() != MARK_SIZE || version != MARK_VERSION {
            return Err(BadCommitMark { len: bytes.len(), version });
        }
        let word = |at: usize| <[u8; 8]>::try_from(&bytes[at..at + 8]).expect("length checked");
        Ok(CommitMark { lsn: Lsn(u64::from_le_bytes(word(1))), time: i64::from_le_bytes(word(9)), max_time: i64::from_le_bytes(word(17)) })
    }
}

/// Where a time falls in a timeline's retained history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimePosition {
    /// Before the oldest retained LSN, or before the first commit whose
    /// time is known (commits of an imported base backup have none).
    BeforeHistory,
    /// Between two retained commits: the answer is the earlier one.
    InHistory,
    /// At or after the last commit ingested: the answer is the last LSN.
    AfterLastCommit,
    /// No commit has been ingested in the retained history.
    NoCommits,
}

impl TimePosition {
    /// As `pageserver.lsn_for_time` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            TimePosition::BeforeHistory => "before_history",
            TimePosition::InHistory => "in_history",
            TimePosition::AfterLastCommit => "after_last_commit",
            TimePosition::NoCommits => "no_commits",
        }
    }
}

/// The answer of [`find_lsn_for_time`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsnForTime {
    /// The LSN whose state holds every commit up to the target time and
    /// none after it (for `BeforeHistory` and `NoCommits`: the oldest
    /// retained LSN and the last one, which do not).
    pub lsn: Lsn,
    pub position: TimePosition,
    /// The last commit at or before the target time, if one is known.
    pub commit: Option<CommitMark>,
}

/// The LSN for time `target` within the retained LSNs `oldest..=last`,
/// reading the mark at an LSN with `mark_at` (about 2 × log2(last − oldest)
/// reads). See the module docs.
pub fn find_lsn_for_time<E>(
    oldest: Lsn,
    last: Lsn,
    target: i64,
    mut mark_at: impl FnMut(Lsn) -> Result<Option<CommitMark>, E>,
) -> Result<LsnForTime, E> {
    let after = |mark: &Option<CommitMark>| mark.is_some_and(|m| m.max_time > target);
    let newest = mark_at(last)?;
    let Some(newest_mark) = newest else {
        return Ok(LsnForTime { lsn: last, position: TimePosition::NoCommits, commit: None });
    };
    if !after(&newest) {
        return Ok(LsnForTime { lsn: last, position: TimePosition::AfterLastCommit, commit: Some(newest_mark) });
    }
    let before_history = LsnForTime { lsn: oldest, position: TimePosition::BeforeHistory, commit: None };
    let mut low = mark_at(oldest)?;
    if oldest >= last || after(&low) {
        return Ok(before_history);
    }
    // Invariant: the mark at `low_lsn` is not after the target, the one at
    // `high_lsn` is.
    let (mut low_lsn, mut high_lsn) = (oldest, last);
    while high_lsn.0 - low_lsn.0 > 1 {
        let mid = Lsn(low_lsn.0 + (high_lsn.0 - low_lsn.0) / 2);
        let mark = mark_at(mid)?;
        if after(&mark) {
            high_lsn = mid;
        } else {
            (low_lsn, low) = (mid, mark);
        }
    }
    Ok(match low {
        // The last commit not after the target, inside the retained history.
        Some(m) if m.lsn >= oldest => LsnForTime { lsn: m.lsn, position: TimePosition::InHistory, commit: Some(m) },
        // It precedes the retained history, and nothing was committed
        // between the oldest LSN and the first commit after the target.
        Some(m) => LsnForTime { lsn: oldest, position: TimePosition::InHistory, commit: Some(m) },
        None => before_history,
    })
}

/// A `TimestampTz` as a `SystemTime`.
pub fn to_system_time(time: i64) -> SystemTime {
    let epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECS);
    if time >= 0 {
        epoch + Duration::from_micros(time as u64)
    } else {
        epoch - Duration::from_micros(time.unsigned_abs())
    }
}

/// A `SystemTime` as a `TimestampTz`.
pub fn from_system_time(time: SystemTime) -> i64 {
    let epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECS);
    match time.duration_since(epoch) {
        Ok(after) => after.as_micros() as i64,
        Err(before) => -(before.duration().as_micros() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Commits (end LSN, time) as ingest stores them: a mark at each.
    fn history(commits: &[(u64, i64)]) -> BTreeMap<Lsn, CommitMark> {
        let mut marks = BTreeMap::new();
        let mut previous = None;
        for &(lsn, time) in commits {
            let mark = CommitMark::next(previous, Lsn(lsn), time);
            marks.insert(Lsn(lsn), mark);
            previous = Some(mark);
        }
        marks
    }

    fn find(marks: &BTreeMap<Lsn, CommitMark>, oldest: u64, last: u64, target: i64) -> (LsnForTime, usize) {
        let mut reads = 0;
        let answer = find_lsn_for_time::<()>(Lsn(oldest), Lsn(last), target, |lsn| {
            reads += 1;
            Ok(marks.range(..=lsn).next_back().map(|(_, m)| *m))
        })
        .unwrap();
        (answer, reads)
    }

    /// The answer by brute force: the last commit whose time is at most
    /// the target before the first one that is after it.
    fn expected(commits: &[(u64, i64)], target: i64) -> Option<u64> {
        commits.iter().take_while(|(_, t)| *t <= target).last().map(|(lsn, _)| *lsn)
    }

    #[test]
    fn marks_round_trip_and_refuse_other_bytes() {
        let mark = CommitMark { lsn: Lsn(0x1_6B37_4D48), time: -5, max_time: 800_000_000_000_000 };
        assert_eq!(CommitMark::decode(&mark.encode()), Ok(mark));
        assert!(CommitMark::decode(&mark.encode()[..24]).is_err());
        let mut other = mark.encode();
        other[0] = 2;
        assert_eq!(CommitMark::decode(&other), Err(BadCommitMark { len: 25, version: 2 }));
    }

    #[test]
    fn every_target_gives_the_commit_recovery_would_stop_after() {
        // Times out of LSN order at 300/400 (a backend that took its time
        // early), and two commits at the same time.
        let commits = [(100, 10), (200, 20), (300, 35), (400, 30), (500, 40), (600, 40), (700, 55)];
        let marks = history(&commits);
        for target in 10..55 {
            let (answer, reads) = find(&marks, 50, 800, target);
            assert_eq!(answer.position, TimePosition::InHistory, "target {target}");
            assert_eq!(Some(answer.lsn.0), expected(&commits, target), "target {target}");
            assert_eq!(answer.commit.map(|c| c.lsn), Some(answer.lsn));
            assert!(reads <= 2 + 10, "{reads} reads");
        }
        // At 30 the commit at 400 (time 30) comes after one at 35: recovery
        // stops at 300, the first commit after 30.
        assert_eq!(find(&marks, 50, 800, 30).0.lsn, Lsn(200));
    }

    #[test]
    fn times_outside_the_history() {
        let commits = [(100, 10), (200, 20), (300, 30)];
        let marks = history(&commits);
        let (after, _) = find(&marks, 50, 900, 30);
        assert_eq!((after.lsn, after.position), (Lsn(900), TimePosition::AfterLastCommit));
        assert_eq!(after.commit.map(|c| c.lsn), Some(Lsn(300)));
        // Before the first commit: its state is unknown (an import).
        let (before, _) = find(&marks, 50, 900, 9);
        assert_eq!((before.lsn, before.position, before.commit), (Lsn(50), TimePosition::BeforeHistory, None));
        // GC kept from 150: a target before the commit at 200 whose last
        // commit (100) is older than the history answers the oldest LSN.
        let (kept, _) = find(&marks, 150, 900, 15);
        assert_eq!((kept.lsn, kept.position), (Lsn(150), TimePosition::InHistory));
        assert_eq!(kept.commit.map(|c| c.lsn), Some(Lsn(100)));
        // ... and one before that commit is before the history.
        assert_eq!(find(&marks, 150, 900, 5).0.position, TimePosition::BeforeHistory);
        let (none, _) = find(&BTreeMap::new(), 50, 900, 5);
        assert_eq!((none.lsn, none.position), (Lsn(900), TimePosition::NoCommits));
    }

    #[test]
    fn many_commits_against_brute_force() {
        let mut commits = Vec::new();
        let (mut lsn, mut time) = (1000u64, 0i64);
        for i in 0..5000u64 {
            lsn += 24 + (i * 7919) % 3000;
            time += ((i * 104_729) % 5) as i64 - 1; // sometimes backwards
            commits.push((lsn, time));
        }
        let marks = history(&commits);
        for target in (-3..time + 3).step_by(7) {
            let (answer, _) = find(&marks, 1000, lsn + 100, target);
            match expected(&commits, target) {
                Some(want) if target < commits.iter().map(|c| c.1).max().unwrap() => {
                    assert_eq!((answer.lsn.0, answer.position), (want, TimePosition::InHistory), "target {target}")
                }
                Some(_) => assert_eq!(answer.position, TimePosition::AfterLastCommit),
                None => assert_eq!(answer.position, TimePosition::BeforeHistory),
            }
        }
    }

    #[test]
    fn timestamps_convert_both_ways() {
        assert_eq!(to_system_time(0), UNIX_EPOCH + Duration::from_secs(946_684_800));
        for t in [-1_000_001, 0, 1, 820_000_000_123_456] {
            assert_eq!(from_system_time(to_system_time(t)), t);
        }
    }
}
