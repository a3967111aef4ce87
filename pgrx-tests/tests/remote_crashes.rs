//! The host dies anywhere in the backup: while pgbench writes and
//! compaction makes the backup worker upload layers, upload indexes and
//! delete, the host is SIGKILLed at random moments, `REMOTE_KILLS` times
//! (default 5; 50 in `scripts/campaign.sh`), and started again. After each
//! kill, with the host down, the bucket must be consistent: the newest
//! index of the timeline is readable and every layer it names is there
//! with its size and CRC32C (objects no index names may be left: an upload
//! stopped before its index). At the end the backup catches up, a later
//! pass has removed every orphan, and a fresh host attached from the bucket
//! serves every block equal to the primary's.

use anyhow::{ensure, Context, Result};
use pageserver_harness::s3::S3Server;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;
use common::e2e::{self, lsn_of};

#[test]
fn the_bucket_stays_consistent_when_the_host_dies_anywhere() -> Result<()> {
    let kills = e2e::env_u64("REMOTE_KILLS", 5);
    let s3 = S3Server::start()?;
    s3.create_bucket("crashes")?;
    let (url, options) = (s3.url("crashes", "p"), s3.options());
    // Smaller layers still: more uploads, indexes and deletions to die in.
    let mut settings = e2e::remote_host_settings_with_gc(&url, &options);
    settings.extend([("pageserver.checkpoint_distance", "1MB"), ("pageserver.checkpoint_timeout", "1s"), ("pageserver.gc_horizon", "2MB")]);
    let primary = e2e::start_primary(true, &[])?;
    let mut host = e2e::start_host(true, &settings)?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "2", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let storage = remote::RemoteStorageConfig::parse(&url, &options)?.open()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tenant_id: storage::repo::TenantId = tenant.parse().map_err(anyhow::Error::msg)?;

    let stop = AtomicBool::new(false);
    let (orphans_seen, activities) = std::thread::scope(|scope| -> Result<(usize, Vec<String>)> {
        let pgbench = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "3", "postgres"])?;
            }
            anyhow::Ok(())
        });
        let campaign = (|| -> Result<(usize, Vec<String>)> {
            let (mut orphans, mut activities) = (0, Vec::new());
            let mut seed = 0x0bad_5eed_u64;
            for kill in 0..kills {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                std::thread::sleep(Duration::from_millis(500 + (seed >> 33) % 2500));
                let activity = host.sql_one("SELECT activity FROM pageserver.status() WHERE kind = 'backup'")?.unwrap_or_default();
                host.kill_postmaster().with_context(|| format!("kill {kill}"))?;
                // The host is down: nothing changes the bucket while it is checked.
                for check in rt.block_on(remote::check::check_tenant(&storage, tenant_id, true))? {
                    ensure!(
                        check.missing.is_empty() && check.corrupt.is_empty() && check.bad_index.is_none(),
                        "kill {kill} ({activity}): {check:?}"
                    );
                    orphans += check.orphans.len();
                }
                activities.push(activity);
                host.start_again().with_context(|| format!("restart after kill {kill}"))?;
            }
            Ok((orphans, activities))
        })();
        stop.store(true, Ordering::Relaxed);
        pgbench.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        campaign
    })?;
    let backing_up = activities.iter().filter(|a| a.starts_with("backing up")).count();
    eprintln!("{kills} kills ({backing_up} during a timeline's backup), {orphans_seen} orphaned objects seen after them");

    // The backup catches up and a later pass removes the orphans.
    let target = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, target)?;
    host.wait_for("the backup to catch up and the bucket to be clean", Duration::from_secs(180), || {
        let caught_up = host
            .sql_one(&format!(
                "SELECT 1 FROM pageserver.timelines() WHERE timeline_id = '{timeline}' \
                 AND remote_consistent_lsn::pg_lsn >= '{target}' AND remote_consistent_lsn = disk_consistent_lsn"
            ))
            .ok()
            .flatten()
            .is_some();
        let clean = caught_up && rt.block_on(remote::check::check_tenant(&storage, tenant_id, true)).ok()?.iter().all(|c| c.is_clean());
        clean.then_some(())
    })?;

    // The bucket alone holds the timeline.
    drop(host);
    let fresh = e2e::start_host(true, &settings)?;
    fresh.sql(&format!("SELECT * FROM pageserver.attach_tenant('{tenant}')"))?;
    e2e::compare_after_checkpoint(&primary, &fresh, &tenant, &timeline, true)?;
    e2e::ensure_log_clean(&fresh)
}
