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
    pageserver.checkpoint
TO pageserver_admin;

-- Read-only status, for monitoring and for the admins.
GRANT EXECUTE ON FUNCTION
    pageserver.status,
    pageserver.tenants,
    pageserver.timelines,
    pageserver.remote_timelines,
    pageserver.stat_wal_receiver,
    pageserver.layers
TO pg_monitor, pageserver_admin;
