//! Per-tenant settings (`pageserver.tenant_config`; the manager's side is
//! `tenants::settings`): a tenant may override
//! the host's checkpoint distance and timeout, compaction and image-layer
//! thresholds, GC horizon and PITR interval. The overrides are kept in
//! `<tenant dir>/config.json` (written atomically) and applied to the
//! tenant's repository at once (`Repository::retune`) and at every load;
//! the layers worker reads the file when it opens a tenant. Values use the
//! units of the `pageserver.*` settings of the same names (MB, seconds).

use crate::error::ServiceError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use storage::repo::RepoConfig;

pub const TENANT_CONFIG_FILE: &str = "config.json";

const MB: u64 = 1024 * 1024;

/// One setting a tenant may override: its name (that of the host's
/// `pageserver.<name>`), unit, range, and how it maps onto `RepoConfig`.
struct Setting {
    name: &'static str,
    unit: &'static str,
    min: u64,
    max: u64,
    get: fn(&RepoConfig) -> u64,
    set: fn(&mut RepoConfig, u64),
}

/// The settings, with the ranges of the host's GUCs.
const SETTINGS: [Setting; 7] = [
    Setting {
        name: "checkpoint_distance",
        unit: "MB",
        min: 1,
        max: 16 * 1024,
        get: |c| c.checkpoint_distance / MB,
        set: |c, v| c.checkpoint_distance = v * MB,
    },
    Setting {
        name: "checkpoint_timeout",
        unit: "s",
        min: 1,
        max: 24 * 3600,
        get: |c| c.checkpoint_timeout.as_secs(),
        set: |c, v| c.checkpoint_timeout = Duration::from_secs(v),
    },
    Setting {
        name: "compaction_threshold",
        unit: "",
        min: 2,
        max: 1000,
        get: |c| c.compaction_threshold as u64,
        set: |c, v| c.compaction_threshold = v as usize,
    },
    Setting {
        name: "image_creation_threshold",
        unit: "",
        min: 1,
        max: 1000,
        get: |c| c.image_creation_threshold as u64,
        set: |c, v| c.image_creation_threshold = v as usize,
    },
    Setting {
        name: "image_layer_distance",
        unit: "MB",
        min: 0,
        max: 1024 * 1024,
        get: |c| c.image_layer_distance / MB,
        set: |c, v| c.image_layer_distance = v * MB,
    },
    Setting { name: "gc_horizon", unit: "MB", min: 0, max: 1024 * 1024, get: |c| c.gc_horizon / MB, set: |c, v| c.gc_horizon = v * MB },
    Setting {
        name: "pitr_interval",
        unit: "s",
        min: 0,
        max: i32::MAX as u64,
        get: |c| c.pitr_interval.as_secs(),
        set: |c, v| c.pitr_interval = Duration::from_secs(v),
    },
];

/// A tenant's overrides, by setting name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantSettings(BTreeMap<String, u64>);

/// One setting as `pageserver.tenant_config` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRow {
    pub setting: String,
    pub value: u64,
    pub unit: String,
    /// `tenant` (overridden) or `host` (the host's `pageserver.<setting>`).
    pub source: String,
}

impl TenantSettings {
    /// The tenant's overrides (none without a file).
    pub fn read(tenant_dir: &Path) -> Result<TenantSettings, ServiceError> {
        let path = tenant_dir.join(TENANT_CONFIG_FILE);
        let settings: TenantSettings = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ServiceError::Corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TenantSettings::default()),
            Err(e) => return Err(ServiceError::Io(format!("reading {}: {e}", path.display()))),
        };
        for (name, value) in &settings.0 {
            check(name, *value).map_err(|e| ServiceError::Corrupt(format!("{}: {e}", path.display())))?;
        }
        Ok(settings)
    }

    /// Replaces the file durably (temp file, fsync, rename, directory fsync).
    pub fn write(&self, tenant_dir: &Path) -> Result<(), ServiceError> {
        let path = tenant_dir.join(TENANT_CONFIG_FILE);
        let tmp = path.with_extension("json.tmp");
        let io = |e: std::io::Error| ServiceError::Io(format!("writing {}: {e}", path.display()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("settings serialize")).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(tenant_dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// `base` (the host's settings) with the overrides.
    pub fn apply(&self, base: &RepoConfig) -> RepoConfig {
        let mut conf = base.clone();
        for setting in &SETTINGS {
            if let Some(value) = self.0.get(setting.name) {
                (setting.set)(&mut conf, *value);
            }
        }
        conf
    }

    /// These overrides changed by `changes`, a JSON object of setting names
    /// and numbers (`null` removes an override). Nothing changes on error.
    pub fn changed(&self, changes: &serde_json::Value) -> Result<TenantSettings, ServiceError> {
        let invalid = |m: String| ServiceError::InvalidArgument(m);
        let Some(changes) = changes.as_object() else {
            return Err(invalid(format!("settings must be a JSON object of setting names and numbers, not {changes}")));
        };
        let mut next = self.clone();
        for (name, value) in changes {
            if value.is_null() {
                check(name, None)?;
                next.0.remove(name);
                continue;
            }
            let Some(number) = value.as_u64() else {
                return Err(invalid(format!("setting {name}: {value} is not a whole number of {}", unit_of(name)?)));
            };
            check(name, number)?;
            next.0.insert(name.clone(), number);
        }
        Ok(next)
    }

    /// Every setting in force with `base` as the host's: its value, unit and
    /// whether the tenant overrides it.
    pub fn rows(&self, base: &RepoConfig) -> Vec<SettingRow> {
        let conf = self.apply(base);
        SETTINGS
            .iter()
            .map(|s| SettingRow {
                setting: s.name.to_string(),
                value: (s.get)(&conf),
                unit: s.unit.to_string(),
                source: if self.0.contains_key(s.name) { "tenant" } else { "host" }.to_string(),
            })
            .collect()
    }
}

fn find(name: &str) -> Result<&'static Setting, ServiceError> {
    SETTINGS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        ServiceError::InvalidArgument(format!("unknown tenant setting \"{name}\": expected one of {}", names.join(", ")))
    })
}

fn unit_of(name: &str) -> Result<&'static str, ServiceError> {
    find(name).map(|s| if s.unit.is_empty() { "layers" } else { s.unit })
}

/// The setting exists and `value` (if any) lies in its range.
fn check(name: &str, value: impl Into<Option<u64>>) -> Result<(), ServiceError> {
    let setting = find(name)?;
    match value.into() {
        Some(v) if v < setting.min || v > setting.max => Err(ServiceError::InvalidArgument(format!(
            "setting {name}: {v} is outside its range {} to {} {}",
            setting.min,
            setting.max,
            unit_of(name)?
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_apply_persist_and_refuse_bad_input() {
        let base = RepoConfig { checkpoint_distance: 256 * MB, gc_horizon: 64 * MB, ..RepoConfig::default() };
        let none = TenantSettings::default();
        let set = none.changed(&json!({"checkpoint_distance": 16, "pitr_interval": 0, "compaction_threshold": 4})).unwrap();
        let conf = set.apply(&base);
        assert_eq!((conf.checkpoint_distance, conf.pitr_interval, conf.compaction_threshold), (16 * MB, Duration::ZERO, 4));
        assert_eq!(conf.gc_horizon, 64 * MB, "not overridden: the host's");
        let rows = set.rows(&base);
        assert_eq!(rows.len(), SETTINGS.len());
        let row = |name: &str| rows.iter().find(|r| r.setting == name).unwrap().clone();
        assert_eq!((row("checkpoint_distance").value, row("checkpoint_distance").source.as_str()), (16, "tenant"));
        assert_eq!((row("gc_horizon").value, row("gc_horizon").unit.as_str(), row("gc_horizon").source.as_str()), (64, "MB", "host"));
        // null removes an override.
        let back = set.changed(&json!({"checkpoint_distance": null})).unwrap();
        assert_eq!(back.apply(&base).checkpoint_distance, 256 * MB);

        for bad in [
            json!({"checkpoint_distanse": 16}),
            json!({"checkpoint_distance": 0}),
            json!({"compaction_threshold": 1}),
            json!({"gc_horizon": -1}),
            json!({"gc_horizon": "64MB"}),
            json!({"pitr_interval": 1.5}),
            json!([1, 2]),
            json!({"checkpoint_distance": 16, "nonsense": null}),
        ] {
            let e = set.changed(&bad).unwrap_err();
            assert!(matches!(e, ServiceError::InvalidArgument(_)), "{bad}: {e:?}");
        }

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TenantSettings::read(dir.path()).unwrap(), TenantSettings::default());
        set.write(dir.path()).unwrap();
        assert_eq!(TenantSettings::read(dir.path()).unwrap(), set);
        std::fs::write(dir.path().join(TENANT_CONFIG_FILE), br#"{"compaction_threshold": 0}"#).unwrap();
        assert!(matches!(TenantSettings::read(dir.path()), Err(ServiceError::Corrupt(_))));
    }
}
