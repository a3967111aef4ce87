-- Who may call what (run last in CREATE EXTENSION; pageserver_ext/src/lib.rs).
--
-- Nothing is PUBLIC. Role pageserver_admin manages tenants and timelines
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
