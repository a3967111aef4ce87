//! What the tests that run the manager against real primaries share: a
//! redo that must not be called, and waiting for a condition.

use anyhow::{bail, Result};
use bytes::Bytes;
use std::time::{Duration, Instant};
use storage::key::Key;
use storage::lsn::Lsn;
use storage::repo::{Redo, RedoError};
use storage::value::WalRecordValue;

/// Redo for tests whose reads never need any: an error if called.
pub struct NoRedo;

impl Redo for NoRedo {
    fn apply(&self, key: Key, _: Option<Bytes>, records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, RedoError> {
        Err(RedoError::Invalid(format!("unexpected redo of {key} ({} records)", records.len())))
    }
}

/// Waits until `check` holds, up to a minute.
pub fn wait_for(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check()? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
