-- The last part of CREATE EXTENSION (pageserver_ext/src/lib.rs): what each
-- function is (psql's \df+ and obj_description show it; README.md has the
-- full reference), then who may call what.

COMMENT ON SCHEMA pageserver IS 'pageserver_ext: a page server for stock PostgreSQL 15 primaries (see the README)';

-- Management.
COMMENT ON FUNCTION pageserver.create_tenant IS
    'Creates a tenant (an empty repository) and returns its id: random unless given';
COMMENT ON FUNCTION pageserver.create_timeline IS
    'Creates a timeline fed by a primary: checks it, creates a physical slot, imports a base backup, then streams WAL';
COMMENT ON FUNCTION pageserver.branch_timeline IS
    'Creates a branch of a timeline at an LSN or as of a time (at_time), metadata only; returns its id and branch LSN';
COMMENT ON FUNCTION pageserver.attach_tenant IS
    'Rebuilds a tenant from object storage (pageserver.remote_storage) and streams its timelines on';
COMMENT ON FUNCTION pageserver.detach_tenant IS
    'Hands a tenant over to object storage (everything uploaded) and removes it from this host';
COMMENT ON FUNCTION pageserver.drop_timeline IS
    'Drops a timeline without branches: its layer files, its replication slot on the primary and its objects in object storage';
COMMENT ON FUNCTION pageserver.drop_tenant IS
    'Drops a tenant; with cascade => true its timelines first, branches before their parents';
COMMENT ON FUNCTION pageserver.compact IS
    'Runs a pass of the layers worker now, merging L0 layers however few; returns what it did on the timeline';
COMMENT ON FUNCTION pageserver.gc IS
    'Runs a pass of the layers worker (compaction as due, then garbage collection) now; returns what it did on the timeline';
COMMENT ON FUNCTION pageserver.tenant_config IS
    'Overrides settings for one tenant (checkpoint distance and timeout, compaction and image thresholds, GC horizon, PITR interval); returns those in force';
COMMENT ON FUNCTION pageserver.all_tenant_settings IS
    'Every tenant''s settings in force (the view pageserver.tenant_settings)';
COMMENT ON FUNCTION pageserver.checkpoint IS
    'Writes everything a timeline has ingested to layer files now; returns its disk_consistent_lsn';

-- Inspection.
COMMENT ON FUNCTION pageserver.get_page IS
    'A relation page (named by the primary''s oids) as of any retained LSN, for pageinspect';
COMMENT ON FUNCTION pageserver.rel_size IS
    'A relation fork''s size in blocks as of any retained LSN';
COMMENT ON FUNCTION pageserver.list_relations IS
    'Every relation fork of every database as of any retained LSN, with its size in blocks';
COMMENT ON FUNCTION pageserver.lsn_for_time IS
    'The LSN holding every transaction committed by a time and none after, from the commit times in the WAL';
COMMENT ON FUNCTION pageserver.layers IS
    'A timeline''s layer files: kind, key and LSN ranges, bytes';

-- Status.
COMMENT ON FUNCTION pageserver.status IS
    'The background workers: state, heartbeat, restarts, redo requests, activity';
COMMENT ON FUNCTION pageserver.tenants IS 'The tenants of this page server';
COMMENT ON FUNCTION pageserver.timelines IS
    'The timelines: state, LSNs (ingested, durable, remote), lag, import progress, layers, compaction';
COMMENT ON FUNCTION pageserver.remote_timelines IS
    'Backup to object storage per timeline: remote_consistent_lsn, queue, uploads, deletions, errors';
COMMENT ON FUNCTION pageserver.timeline_sizes IS
    'Per timeline at its last LSN: logical size (bytes of all relations) and physical size (bytes of its layer files)';
COMMENT ON FUNCTION pageserver.stat_page_service IS
    'Page service traffic: connections, and per request kind requests, errors, bytes, time and a latency histogram';
COMMENT ON FUNCTION pageserver.stat_redo IS
    'The redo workers: requests, pages, WAL records, failures and time spent, since the host started';
COMMENT ON FUNCTION pageserver.stat_wal_receiver IS
    'The WAL receivers: status, slot, lag in bytes and seconds, last message, reconnects, bytes, last error';

-- Debugging (superusers only).
COMMENT ON FUNCTION pageserver.redo_apply IS
    'Debugging: a page after applying raw WAL records in a redo worker';
COMMENT ON FUNCTION pageserver.redo_bench IS
    'Debugging: times redo requests through the redo workers';
COMMENT ON FUNCTION pageserver.mask_page IS
    'Debugging: a page masked by a resource manager''s rm_mask, as wal_consistency_checking compares pages';

-- Who may call what. Nothing is PUBLIC. Role pageserver_admin manages tenants and timelines
-- and inspects their pages; members of pg_monitor read the status
-- functions. The debugging functions (redo_apply, redo_bench, mask_page)
-- stay with superusers: they feed raw WAL to the host's redo code.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pageserver_admin') THEN
        CREATE ROLE pageserver_admin NOLOGIN;
        COMMENT ON ROLE pageserver_admin IS
            'pageserver_ext: may manage tenants and timelines and inspect their pages (grant it to DBAs)';
    END IF;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pageserver FROM PUBLIC;
GRANT USAGE ON SCHEMA pageserver TO pageserver_admin, pg_monitor;

-- Management and inspection.
GRANT EXECUTE ON FUNCTION
    pageserver.create_tenant,
    pageserver.create_timeline,
    pageserver.branch_timeline,
    pageserver.attach_tenant,
    pageserver.detach_tenant,
    pageserver.drop_timeline,
    pageserver.drop_tenant,
    pageserver.get_page,
    pageserver.rel_size,
    pageserver.list_relations,
    pageserver.lsn_for_time,
    pageserver.checkpoint,
    pageserver.compact,
    pageserver.gc,
    pageserver.tenant_config
TO pageserver_admin;

-- Read-only status, for monitoring and for the admins.
GRANT EXECUTE ON FUNCTION
    pageserver.status,
    pageserver.tenants,
    pageserver.timelines,
    pageserver.remote_timelines,
    pageserver.stat_wal_receiver,
    pageserver.stat_page_service,
    pageserver.stat_redo,
    pageserver.timeline_sizes,
    pageserver.all_tenant_settings,
    pageserver.layers
TO pg_monitor, pageserver_admin;

CREATE VIEW pageserver.tenant_settings AS SELECT * FROM pageserver.all_tenant_settings();
COMMENT ON VIEW pageserver.tenant_settings IS
    'Every tenant''s settings in force: value, unit, and whether the tenant overrides the host (pageserver.tenant_config)';
REVOKE ALL ON pageserver.tenant_settings FROM PUBLIC;
GRANT SELECT ON pageserver.tenant_settings TO pg_monitor, pageserver_admin;

-- What is under way, with bytes done and in all where they are known.
CREATE VIEW pageserver.progress AS
    SELECT 'import'::text AS operation, tenant_id, timeline_id,
           import_bytes_done AS bytes_done, import_bytes_total AS bytes_total,
           'importing the base backup'::text AS detail
      FROM pageserver.timelines() WHERE state = 'importing'
    UNION ALL
    SELECT 'compaction', tenant_id, timeline_id, NULL, NULL, 'layers worker pass (L0 merge, image layers, GC)'
      FROM pageserver.timelines() WHERE compacting
    UNION ALL
    SELECT 'upload', tenant_id, timeline_id, NULL, queued_bytes,
           queued_objects || ' objects queued for object storage'
      FROM pageserver.remote_timelines() WHERE queued_objects > 0
    UNION ALL
    SELECT 'download', m[1], NULL, m[2]::bigint << 20, m[3]::bigint << 20, activity
      FROM pageserver.status(),
           regexp_match(activity, '^attaching tenant ([0-9a-f]{32}): .* ([0-9]+) of ([0-9]+) MiB$') AS m
     WHERE kind = 'backup' AND m IS NOT NULL;
COMMENT ON VIEW pageserver.progress IS
    'Imports, compactions, uploads and attach downloads under way, with bytes done and in all where known';
REVOKE ALL ON pageserver.progress FROM PUBLIC;
GRANT SELECT ON pageserver.progress TO pg_monitor, pageserver_admin;
