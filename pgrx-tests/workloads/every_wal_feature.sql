-- A workload that writes every kind of WAL a PostgreSQL 15 primary writes
-- for its data, for the end-to-end tests (pages, SLRUs, fullbackup) and the
-- redo oracle. Run by pgrx-tests/tests/common/workload.rs: statements end
-- with ";" at the end of a line; "\connect NAME" switches database;
-- "\concurrent_key_share TABLE ID" makes a second session lock a row while
-- the first holds a lock on it (a multixact of two members). Nothing here may
-- depend on timing: the tests compare results with the primary's own files.

-- Tables of every access method, TOAST, all data types the AMs index.
CREATE TABLE items (id int PRIMARY KEY, tags text[], body text, pt point, rng int4range, n int, doc tsvector, blob bytea);
CREATE INDEX items_hash ON items USING hash (n);
CREATE INDEX items_gin ON items USING gin (tags);
CREATE INDEX items_gin_fts ON items USING gin (doc);
CREATE INDEX items_gist ON items USING gist (rng);
CREATE INDEX items_spgist ON items USING spgist (pt);
CREATE INDEX items_brin ON items USING brin (id) WITH (pages_per_range = 2);
INSERT INTO items SELECT i, ARRAY['t' || (i % 17), 'u' || (i % 5)], md5(i::text), point(i % 100, i / 100), int4range(i, i + 10), i % 1000, to_tsvector('simple', 'word' || (i % 37) || ' other' || (i % 11)), CASE WHEN i % 40 = 0 THEN convert_to(repeat(md5(i::text), 300), 'UTF8') END FROM generate_series(1, 6000) i;
UPDATE items SET n = n + 1, tags = tags || 'v'::text WHERE id % 3 = 0;
UPDATE items SET body = body || 'x' WHERE id % 5 = 0;
DELETE FROM items WHERE id % 7 = 0;
VACUUM items;

-- Unlogged relations: init forks of a table, a sequence and indexes of every AM.
CREATE UNLOGGED TABLE scratch (id int, tags text[], pt point, rng int4range, n int);
CREATE INDEX scratch_btree ON scratch (id);
CREATE INDEX scratch_hash ON scratch USING hash (n);
CREATE INDEX scratch_gin ON scratch USING gin (tags);
CREATE INDEX scratch_gist ON scratch USING gist (rng);
CREATE INDEX scratch_spgist ON scratch USING spgist (pt);
CREATE INDEX scratch_brin ON scratch USING brin (id);
INSERT INTO scratch SELECT i, ARRAY['a'], point(i, i), int4range(i, i + 1), i FROM generate_series(1, 2000) i;
CREATE UNLOGGED SEQUENCE scratch_seq;
SELECT nextval('scratch_seq') FROM generate_series(1, 10);

-- Sequences: logged ahead in steps of 32, set explicitly, altered.
CREATE SEQUENCE ticks CACHE 1;
SELECT nextval('ticks') FROM generate_series(1, 100);
CREATE TABLE serials (id bigserial PRIMARY KEY, v int);
INSERT INTO serials (v) SELECT i FROM generate_series(1, 500) i;
CREATE SEQUENCE stepped INCREMENT BY 7 START 3;
SELECT setval('stepped', 1000);
ALTER SEQUENCE stepped RESTART WITH 50;
SELECT nextval('stepped');

-- Temporary objects (their catalog rows are WAL-logged, their data is not).
CREATE TEMP TABLE temp_rows AS SELECT i FROM generate_series(1, 1000) i;
CREATE INDEX ON temp_rows (i);
DROP TABLE temp_rows;

-- Row locks: a multixact from one session (share lock, then an update in a
-- subtransaction), and from two sessions at once.
CREATE TABLE locked (id int PRIMARY KEY, v int);
INSERT INTO locked SELECT i, 0 FROM generate_series(1, 100) i;
BEGIN;
SELECT id FROM locked WHERE id <= 20 FOR SHARE;
SAVEPOINT s1;
UPDATE locked SET v = v + 1 WHERE id <= 10;
RELEASE SAVEPOINT s1;
COMMIT;
\concurrent_key_share locked 50
\concurrent_key_share locked 51
UPDATE locked SET v = v + 1 WHERE id IN (50, 51);

-- Large transactions with many subtransactions (more than the 64 cached per
-- backend: the commit record carries them), some rolled back.
CREATE TABLE subx (id int, v text);
DO $$ BEGIN FOR i IN 1..300 LOOP BEGIN INSERT INTO subx VALUES (i, repeat('s', 100)); IF i % 10 = 0 THEN RAISE EXCEPTION 'roll back %', i; END IF; EXCEPTION WHEN raise_exception THEN NULL; END; END LOOP; END $$;
BEGIN;
INSERT INTO subx SELECT i, 'aborted' FROM generate_series(1, 1000) i;
ROLLBACK;

-- Prepared transactions, committed and rolled back.
BEGIN;
INSERT INTO subx VALUES (-1, 'prepared and committed');
PREPARE TRANSACTION 'p1';
BEGIN;
INSERT INTO subx VALUES (-2, 'prepared and rolled back');
PREPARE TRANSACTION 'p2';
COMMIT PREPARED 'p1';
ROLLBACK PREPARED 'p2';

-- VACUUM that truncates, with all-visible and all-frozen bits on the rest.
CREATE TABLE shrinking (i int, pad text) WITH (autovacuum_enabled = off);
INSERT INTO shrinking SELECT i, repeat('p', 200) FROM generate_series(1, 2000) i;
VACUUM (FREEZE) shrinking;
DELETE FROM shrinking WHERE i > 1000;
VACUUM shrinking;
DELETE FROM items WHERE id > 5500;
VACUUM items;

-- DDL of many kinds.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE ddl (id positive, m mood, created timestamptz DEFAULT '2020-01-01', extra jsonb);
INSERT INTO ddl SELECT i, 'ok', '2021-01-01', jsonb_build_object('k', i) FROM generate_series(1, 300) i;
ALTER TABLE ddl ADD COLUMN later int DEFAULT 5;
ALTER TABLE ddl ALTER COLUMN later TYPE bigint;
ALTER TABLE ddl RENAME COLUMN extra TO payload;
CREATE INDEX ddl_payload ON ddl USING gin (payload);
CREATE VIEW ddl_view AS SELECT id, m FROM ddl WHERE id > 10;
CREATE MATERIALIZED VIEW ddl_mat AS SELECT m, count(*) FROM ddl GROUP BY m;
REFRESH MATERIALIZED VIEW ddl_mat;
CREATE FUNCTION double_it(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';
CREATE TABLE parted (k int, v text) PARTITION BY RANGE (k);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (100) TO (200);
INSERT INTO parted SELECT i, md5(i::text) FROM generate_series(0, 199) i;
CLUSTER items USING items_pkey;
VACUUM FULL serials;
REINDEX TABLE ddl;
TRUNCATE parted_2;
CREATE TABLE dropped (i int);
INSERT INTO dropped SELECT generate_series(1, 100);
DROP TABLE dropped;
CREATE ROLE workload_role;
GRANT SELECT ON ddl TO workload_role;
COMMENT ON TABLE ddl IS 'every kind of DDL';

-- Databases created with both strategies, used, and one dropped.
CREATE DATABASE db_wal_log STRATEGY wal_log;
CREATE DATABASE db_file_copy STRATEGY file_copy;
CREATE DATABASE db_dropped;
DROP DATABASE db_dropped;
\connect db_wal_log
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 3000) i;
\connect db_file_copy
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 3000) i;
DELETE FROM t WHERE id % 2 = 0;
VACUUM t;
\connect postgres
