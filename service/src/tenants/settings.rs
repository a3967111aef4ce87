//! The manager's side of per-tenant settings (`pageserver.tenant_config`):
//! changing a tenant's overrides durably and at once, and listing every
//! tenant's settings in force (the settings themselves: `crate::tenant_settings`).

use crate::error::ServiceError;
use crate::tenant_settings::{SettingRow, TenantSettings};

impl super::Manager {
    /// Changes tenant `id`'s overrides by `changes` (see
    /// [`TenantSettings::changed`]), durably and at once; returns every
    /// setting now in force. Refused while the tenant is being detached.
    pub fn tenant_config(&self, id: super::TenantId, changes: &serde_json::Value) -> Result<Vec<SettingRow>, ServiceError> {
        let tenant = self.tenant(id)?;
        let _change = tenant.change_guard()?;
        let current = TenantSettings::read(&tenant.dir)?;
        let next = current.changed(changes)?;
        if next != current {
            next.write(&tenant.dir)?;
            tenant.repo.retune(&next.apply(&self.conf));
            tracing::info!("tenant {id}: settings changed to {}", serde_json::to_string(&next).unwrap_or_default());
        }
        Ok(next.rows(&self.conf))
    }

    /// Every tenant's settings in force, by tenant.
    pub fn tenant_settings(&self) -> Result<Vec<(String, SettingRow)>, ServiceError> {
        let tenants: Vec<_> = self.tenants.read().values().cloned().collect();
        let mut rows = Vec::new();
        for tenant in tenants {
            for row in TenantSettings::read(&tenant.dir)?.rows(&self.conf) {
                rows.push((tenant.id.to_string(), row));
            }
        }
        Ok(rows)
    }
}
