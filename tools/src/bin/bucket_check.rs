//! Checks a tenant's objects in object storage against their indexes
//! (`remote::check`): every layer the newest index of each timeline names
//! must exist with its size and (unless `--sizes-only`) its CRC32C, and
//! every other object under the timeline is reported as an orphan.
//!
//! ```text
//! bucket_check --remote-storage s3://bucket/prefix \
//!     --options endpoint=http://127.0.0.1:9000,region=us-east-1 --tenant <id> [--tenant <id> ...]
//! ```
//!
//! Credentials come from the options or the provider's environment
//! variables, as for `pageserver.remote_storage`. Exits 0 if everything is
//! clean, 1 if something is missing, corrupt or orphaned, 2 on an error.

use clap::Parser;
use remote::check::{check_tenant, TimelineCheck};
use remote::RemoteStorageConfig;
use storage::repo::TenantId;

#[derive(Parser, Debug)]
#[command(about = "Checks a tenant's objects in object storage against their indexes")]
struct Args {
    /// The storage URL, as in pageserver.remote_storage.
    #[arg(long)]
    remote_storage: String,
    /// key=value options, as in pageserver.remote_storage_options.
    #[arg(long, default_value = "", env = "PAGESERVER_REMOTE_STORAGE_OPTIONS", hide_env_values = true)]
    options: String,
    /// Tenants to check (32 hexadecimal digits each).
    #[arg(long = "tenant", required = true)]
    tenants: Vec<String>,
    /// Compare sizes only; do not read layers to check their CRC32C.
    #[arg(long)]
    sizes_only: bool,
}

fn report(tenant: TenantId, check: &TimelineCheck) -> bool {
    let timeline = check.timeline.map_or_else(|| "(not a timeline)".to_string(), |t| t.to_string());
    match check.index {
        Some((generation, lsn)) => println!(
            "tenant {tenant} timeline {timeline}: index generation {generation} at {lsn}, {} layers ({} bytes) checked",
            check.layers_checked, check.bytes_checked
        ),
        None => println!("tenant {tenant} timeline {timeline}: no readable index"),
    }
    if let Some(e) = &check.bad_index {
        println!("  bad index: {e}");
    }
    for path in &check.missing {
        println!("  missing: {path}");
    }
    for what in &check.corrupt {
        println!("  corrupt: {what}");
    }
    for object in &check.orphans {
        println!("  orphan: {} ({} bytes)", object.path, object.size);
    }
    check.is_clean()
}

fn main() {
    let args = Args::parse();
    let run = || -> anyhow::Result<bool> {
        let storage = RemoteStorageConfig::parse(&args.remote_storage, &args.options)?.open()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut clean = true;
        for tenant in &args.tenants {
            let tenant: TenantId = tenant.parse().map_err(anyhow::Error::msg)?;
            let checks = runtime.block_on(check_tenant(&storage, tenant, !args.sizes_only))?;
            if checks.is_empty() {
                println!("tenant {tenant}: no timeline in {}", storage.description());
                clean = false;
            }
            for check in &checks {
                clean &= report(tenant, check);
            }
        }
        Ok(clean)
    };
    match run() {
        Ok(true) => println!("clean"),
        Ok(false) => {
            println!("NOT clean");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("bucket_check: {e:#}");
            std::process::exit(2);
        }
    }
}
