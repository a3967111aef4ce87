-- pageserver_ext 0.1.0 -> 0.2.0, run by ALTER EXTENSION pageserver_ext UPDATE
-- (search_path is schema pageserver). Written by hand: after it, the catalog
-- equals a fresh CREATE EXTENSION of 0.2.0 (pgrx-tests/tests/sql_upgrade.rs
-- compares every function, its comment and its ACL). The CREATE FUNCTION
-- statements are those cargo pgrx generates for 0.2.0.
--
-- 0.2.0 adds lsn_for_time, drop_timeline and drop_tenant, gives
-- branch_timeline the argument at_time, and comments every function.

\echo Use "ALTER EXTENSION pageserver_ext UPDATE" to load this file. \quit

-- branch_timeline gains at_time: a new signature, so a new function. The
-- old one is renamed first so that its grants, whoever made them, can be
-- copied onto the new one; then it goes.
ALTER FUNCTION branch_timeline(text, text, text, text) RENAME TO branch_timeline_0_1_0;

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

REVOKE ALL ON FUNCTION branch_timeline(text, text, text, text, timestamptz) FROM PUBLIC;

DO $$
DECLARE
    grant_ record;
BEGIN
    FOR grant_ IN
        SELECT acl.grantee, acl.is_grantable
        FROM pg_proc p, aclexplode(p.proacl) acl
        WHERE p.oid = 'branch_timeline_0_1_0(text, text, text, text)'::regprocedure
          AND acl.grantee <> p.proowner
    LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION branch_timeline(text, text, text, text, timestamptz) TO %s%s',
            CASE WHEN grant_.grantee = 0 THEN 'PUBLIC' ELSE grant_.grantee::regrole::text END,
            CASE WHEN grant_.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

DROP FUNCTION branch_timeline_0_1_0(text, text, text, text);

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

-- As in finalize.sql: not PUBLIC; pageserver_admin manages and inspects.
REVOKE ALL ON FUNCTION
    pageserver.drop_timeline,
    pageserver.drop_tenant,
    pageserver.lsn_for_time
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pageserver.drop_timeline,
    pageserver.drop_tenant,
    pageserver.lsn_for_time
TO pageserver_admin;

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
COMMENT ON FUNCTION pageserver.stat_wal_receiver IS
    'The WAL receivers: status, slot, lag in bytes and seconds, last message, reconnects, bytes, last error';

-- Debugging (superusers only).
COMMENT ON FUNCTION pageserver.redo_apply IS
    'Debugging: a page after applying raw WAL records in a redo worker';
COMMENT ON FUNCTION pageserver.redo_bench IS
    'Debugging: times redo requests through the redo workers';
COMMENT ON FUNCTION pageserver.mask_page IS
    'Debugging: a page masked by a resource manager''s rm_mask, as wal_consistency_checking compares pages';
