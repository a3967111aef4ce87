-- pageserver_ext 0.1.0 -> 0.2.0, run by ALTER EXTENSION pageserver_ext UPDATE
-- (search_path is schema pageserver). Written by hand: after it, the catalog
-- equals a fresh CREATE EXTENSION of 0.2.0 (pgrx-tests/tests/sql_upgrade.rs
-- compares every function, its comment and its ACL). The CREATE FUNCTION
-- statements are those cargo pgrx generates for 0.2.0.
--
-- 0.2.0 adds lsn_for_time, drop_timeline, drop_tenant, compact, gc,
-- tenant_config, all_tenant_settings, timeline_sizes, stat_page_service and
-- stat_redo, the views tenant_settings and progress, gives branch_timeline
-- the argument at_time and layers the column remote, and comments every
-- function.

\echo Use "ALTER EXTENSION pageserver_ext UPDATE" to load this file. \quit

-- branch_timeline gains at_time (a new signature) and layers the column
-- remote (a new result type): each becomes a new function. The old ones are
-- renamed first so that their grants, whoever made them, can be copied onto
-- the new ones; then they go.
ALTER FUNCTION branch_timeline(text, text, text, text) RENAME TO branch_timeline_0_1_0;
ALTER FUNCTION layers(text, text) RENAME TO layers_0_1_0;

-- pageserver_ext::mgmt_sql::branch_timeline_at
CREATE  FUNCTION "branch_timeline"(
	"tenant_id" TEXT, /* String */
	"parent_timeline_id" TEXT, /* String */
	"lsn" TEXT DEFAULT NULL, /* Option < String > */
	"timeline_id" TEXT DEFAULT NULL, /* Option < String > */
	"at_time" timestamp with time zone DEFAULT NULL /* Option < TimestampWithTimeZone > */
) RETURNS TABLE (
	"timeline_id" TEXT,  /* String */
	"branch_lsn" TEXT  /* String */
)

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'branch_timeline_at_wrapper';

-- pageserver_ext::inspect_sql::layers_with_remote
CREATE  FUNCTION "layers"(
	"tenant_id" TEXT, /* String */
	"timeline_id" TEXT /* String */
) RETURNS TABLE (
	"file_name" TEXT,  /* String */
	"kind" TEXT,  /* String */
	"key_start" TEXT,  /* String */
	"key_end" TEXT,  /* String */
	"lsn_start" TEXT,  /* String */
	"lsn_end" TEXT,  /* String */
	"bytes" bigint,  /* i64 */
	"remote" bool  /* Option < bool > */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'layers_with_remote_wrapper';

REVOKE ALL ON FUNCTION branch_timeline(text, text, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION layers(text, text) FROM PUBLIC;

DO $$
DECLARE
    replaced record;
    grant_ record;
BEGIN
    FOR replaced IN
        SELECT * FROM (VALUES
            ('branch_timeline_0_1_0(text, text, text, text)'::regprocedure, 'branch_timeline(text, text, text, text, timestamptz)'),
            ('layers_0_1_0(text, text)'::regprocedure, 'layers(text, text)')
        ) AS r(old_function, new_function)
    LOOP
        FOR grant_ IN
            SELECT acl.grantee, acl.is_grantable
            FROM pg_proc p, aclexplode(p.proacl) acl
            WHERE p.oid = replaced.old_function AND acl.grantee <> p.proowner
        LOOP
            EXECUTE format(
                'GRANT EXECUTE ON FUNCTION %s TO %s%s',
                replaced.new_function,
                CASE WHEN grant_.grantee = 0 THEN 'PUBLIC' ELSE grant_.grantee::regrole::text END,
                CASE WHEN grant_.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END
$$;

DROP FUNCTION branch_timeline_0_1_0(text, text, text, text);
DROP FUNCTION layers_0_1_0(text, text);

-- New functions.

-- pageserver_ext::mgmt_sql::drop_tenant
CREATE  FUNCTION "drop_tenant"(
	"tenant_id" TEXT, /* String */
	"cascade" bool DEFAULT false /* bool */
) RETURNS TABLE (
	"timeline_id" TEXT,  /* String */
	"slot_name" TEXT,  /* Option < String > */
	"slot_dropped" bool,  /* bool */
	"remote_deleted" bool  /* Option < bool > */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_tenant_wrapper';

-- pageserver_ext::mgmt_sql::drop_timeline
CREATE  FUNCTION "drop_timeline"(
	"tenant_id" TEXT, /* String */
	"timeline_id" TEXT /* String */
) RETURNS TABLE (
	"timeline_id" TEXT,  /* String */
	"slot_name" TEXT,  /* Option < String > */
	"slot_dropped" bool,  /* bool */
	"remote_deleted" bool  /* Option < bool > */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_timeline_wrapper';

-- pageserver_ext::inspect_sql::lsn_for_time
CREATE  FUNCTION "lsn_for_time"(
	"tenant_id" TEXT, /* String */
	"timeline_id" TEXT, /* String */
	"at" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS TABLE (
	"lsn" TEXT,  /* String */
	"position" TEXT,  /* String */
	"commit_lsn" TEXT,  /* Option < String > */
	"commit_time" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lsn_for_time_wrapper';

-- pageserver_ext::mgmt_sql::all_tenant_settings
CREATE  FUNCTION "all_tenant_settings"() RETURNS TABLE (
	"tenant_id" TEXT,  /* String */
	"setting" TEXT,  /* String */
	"value" bigint,  /* i64 */
	"unit" TEXT,  /* String */
	"source" TEXT  /* String */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'all_tenant_settings_wrapper';

-- pageserver_ext::inspect_sql::compact
CREATE  FUNCTION "compact"(
	"tenant_id" TEXT, /* String */
	"timeline_id" TEXT /* String */
) RETURNS TEXT /* String */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'compact_wrapper';

-- pageserver_ext::inspect_sql::gc
CREATE  FUNCTION "gc"(
	"tenant_id" TEXT, /* String */
	"timeline_id" TEXT /* String */
) RETURNS TEXT /* String */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'gc_wrapper';

-- pageserver_ext::mgmt_sql::stat_page_service
CREATE  FUNCTION "stat_page_service"() RETURNS TABLE (
	"kind" TEXT,  /* String */
	"requests" bigint,  /* i64 */
	"errors" bigint,  /* i64 */
	"bytes" bigint,  /* Option < i64 > */
	"open_connections" bigint,  /* Option < i64 > */
	"total_ms" double precision,  /* Option < f64 > */
	"latency_bounds_us" bigint[],  /* :: std :: option :: Option < Vec < i64 > > */
	"latency_buckets" bigint[]  /* :: std :: option :: Option < Vec < i64 > > */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stat_page_service_wrapper';

-- pageserver_ext::sql::stat_redo
CREATE  FUNCTION "stat_redo"() RETURNS TABLE (
	"number" INT,  /* i32 */
	"pid" INT,  /* Option < i32 > */
	"requests" bigint,  /* i64 */
	"pages" bigint,  /* i64 */
	"records" bigint,  /* i64 */
	"failed" bigint,  /* i64 */
	"busy_ms" double precision  /* f64 */
)
STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stat_redo_wrapper';

-- pageserver_ext::mgmt_sql::tenant_config
CREATE  FUNCTION "tenant_config"(
	"tenant_id" TEXT, /* String */
	"settings" jsonb DEFAULT '{}' /* pgrx :: JsonB */
) RETURNS TABLE (
	"setting" TEXT,  /* String */
	"value" bigint,  /* i64 */
	"unit" TEXT,  /* String */
	"source" TEXT  /* String */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_config_wrapper';

-- pageserver_ext::mgmt_sql::timeline_sizes
CREATE  FUNCTION "timeline_sizes"() RETURNS TABLE (
	"tenant_id" TEXT,  /* String */
	"timeline_id" TEXT,  /* String */
	"lsn" TEXT,  /* String */
	"logical_size" bigint,  /* i64 */
	"physical_size" bigint  /* i64 */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'timeline_sizes_wrapper';

-- As in finalize.sql: not PUBLIC; pageserver_admin manages and inspects,
-- pg_monitor reads the status.
REVOKE ALL ON FUNCTION
    pageserver.drop_timeline,
    pageserver.drop_tenant,
    pageserver.lsn_for_time,
    pageserver.compact,
    pageserver.gc,
    pageserver.tenant_config,
    pageserver.stat_page_service,
    pageserver.stat_redo,
    pageserver.timeline_sizes,
    pageserver.all_tenant_settings
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pageserver.drop_timeline,
    pageserver.drop_tenant,
    pageserver.lsn_for_time,
    pageserver.compact,
    pageserver.gc,
    pageserver.tenant_config
TO pageserver_admin;
GRANT EXECUTE ON FUNCTION
    pageserver.stat_page_service,
    pageserver.stat_redo,
    pageserver.timeline_sizes,
    pageserver.all_tenant_settings
TO pg_monitor, pageserver_admin;

-- The comments of finalize.sql (0.1.0 had none).
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

-- The views of finalize.sql, with their comments and grants.
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
