-- Objects the stand-in creates in each PostgreSQL database it serves:
-- the collation, the side catalog of declared SQL Server types, and
-- helper functions the T-SQL translation calls. Idempotent.
CREATE SCHEMA IF NOT EXISTS mssql_standin;
CREATE SCHEMA IF NOT EXISTS dbo;
DO $$ BEGIN
  -- SQL_Latin1_General_CP1_CI_AS: case-insensitive, accent-sensitive.
  CREATE COLLATION mssql_standin.ci_as (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE TABLE IF NOT EXISTS mssql_standin.columns (
  table_oid oid NOT NULL,
  attnum int2 NOT NULL,
  table_schema text NOT NULL,
  table_name text NOT NULL,
  column_name text NOT NULL,
  ordinal int NOT NULL,
  type_decl text NOT NULL,
  is_nullable bool NOT NULL,
  is_identity bool NOT NULL,
  seed int8,
  increment int8,
  default_text text,
  data_type text NOT NULL DEFAULT '',
  char_length int,
  max_length int NOT NULL DEFAULT 0,
  num_precision int NOT NULL DEFAULT 0,
  num_scale int NOT NULL DEFAULT 0,
  system_type_id int NOT NULL DEFAULT 0,
  PRIMARY KEY (table_oid, attnum)
);
CREATE TABLE IF NOT EXISTS mssql_standin.indexes (
  index_oid oid PRIMARY KEY,
  table_oid oid NOT NULL,
  name text NOT NULL,
  is_primary_key bool NOT NULL,
  is_unique_constraint bool NOT NULL,
  filter text
);

CREATE OR REPLACE FUNCTION mssql_standin.utf16_len(text) RETURNS int
LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT char_length($1) + char_length(regexp_replace($1 COLLATE "C", '[^\U00010000-\U0010FFFF]', '', 'g')) $$;

-- Rounds to datetime's 1/300 s ticks (to the nearest microsecond).
CREATE OR REPLACE FUNCTION mssql_standin.dt(timestamp) RETURNS timestamp
LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT $1::date + make_interval(secs => (round(extract(epoch FROM $1::time) * 300) / 300.0)::float8) $$;

-- A datetime value as 100 ns units since 1900-01-01, converted the way SQL
-- Server converts datetime to datetime2(7): exact 1/300 s ticks, rounded.
CREATE OR REPLACE FUNCTION mssql_standin.dt100(timestamp) RETURNS int8
LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT ($1::date - date '1900-01-01')::int8 * 864000000000
          + round(round(extract(epoch FROM $1::time) * 300) * 100000 / 3.0)::int8 $$;

CREATE OR REPLACE FUNCTION mssql_standin.sdt(timestamp) RETURNS timestamp
LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT date_trunc('minute', $1 + interval '30 seconds') $$;

CREATE OR REPLACE FUNCTION mssql_standin.getdate() RETURNS timestamp
LANGUAGE sql STABLE AS $$ SELECT mssql_standin.dt(localtimestamp) $$;

CREATE OR REPLACE FUNCTION mssql_standin.getutcdate() RETURNS timestamp
LANGUAGE sql STABLE AS $$ SELECT mssql_standin.dt((now() AT TIME ZONE 'UTC')::timestamp) $$;

CREATE OR REPLACE FUNCTION mssql_standin.rt(text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT rtrim($1, ' ') $$;

CREATE OR REPLACE FUNCTION mssql_standin.like(text, text) RETURNS bool
LANGUAGE sql IMMUTABLE AS $$ SELECT (lower($1) COLLATE "C") LIKE (lower($2) COLLATE "C") $$;

CREATE OR REPLACE FUNCTION mssql_standin.len(text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT mssql_standin.utf16_len(rtrim($1, ' ')) $$;
CREATE OR REPLACE FUNCTION mssql_standin.len(bigint) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT char_length($1::text) $$;
CREATE OR REPLACE FUNCTION mssql_standin.len(numeric) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT char_length($1::text) $$;

CREATE OR REPLACE FUNCTION mssql_standin.datalength(text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT 2 * mssql_standin.utf16_len($1) $$;
CREATE OR REPLACE FUNCTION mssql_standin.datalength(smallint) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN $1 IS NULL THEN NULL ELSE 2 END $$;
CREATE OR REPLACE FUNCTION mssql_standin.datalength(int) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN $1 IS NULL THEN NULL ELSE 4 END $$;
CREATE OR REPLACE FUNCTION mssql_standin.datalength(bigint) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN $1 IS NULL THEN NULL ELSE 8 END $$;
CREATE OR REPLACE FUNCTION mssql_standin.datalength(timestamp) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN $1 IS NULL THEN NULL ELSE 8 END $$;
CREATE OR REPLACE FUNCTION mssql_standin.datalength(uuid) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN $1 IS NULL THEN NULL ELSE 16 END $$;
CREATE OR REPLACE FUNCTION mssql_standin.datalength(bytea) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT octet_length($1) $$;

-- OBJECT_ID('[dbo].[Company]'): the table's oid, or NULL.
-- binary/varbinary converted to an integer type of `bytes` bytes, as SQL
-- Server does: big-endian, the rightmost `bytes` bytes, zeros padded on the
-- left; tinyint unsigned, the others two's complement.
CREATE OR REPLACE FUNCTION mssql_standin.binary_int(b bytea, bytes int) RETURNS int8
LANGUAGE sql IMMUTABLE STRICT AS $$
SELECT CASE bytes
         WHEN 8 THEN ('x' || lpad(right(encode(b, 'hex'), 16), 16, '0'))::bit(64)::int8
         WHEN 4 THEN ('x' || lpad(right(encode(b, 'hex'), 8), 8, '0'))::bit(32)::int4::int8
         WHEN 2 THEN (('x' || lpad(right(encode(b, 'hex'), 4), 8, '0'))::bit(32)::int4
                      # 32768) - 32768
         ELSE ('x' || lpad(right(encode(b, 'hex'), 2), 8, '0'))::bit(32)::int4 END $$;
-- An integer from a value the translator could not type (SUBSTRING of a
-- column whose name several tables use): binary as above, text parsed.
CREATE OR REPLACE FUNCTION mssql_standin.int_of(b bytea, bytes int) RETURNS int8
LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT mssql_standin.binary_int(b, bytes) $$;
CREATE OR REPLACE FUNCTION mssql_standin.int_of(t text, bytes int) RETURNS int8
LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT CAST(trim(t) AS int8) $$;

CREATE OR REPLACE FUNCTION mssql_standin.object_id(name text, kind text DEFAULT NULL) RETURNS int
LANGUAGE sql STABLE AS $$
  WITH p AS (
    SELECT array_remove(regexp_split_to_array(replace(replace(name, '[', ''), ']', ''), '\.'), '') AS parts
  )
  SELECT c.oid::int FROM p, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relname = lower(parts[array_length(parts, 1)])
    AND CASE WHEN parts[array_length(parts, 1)] LIKE '#%'
             -- tempdb..#t: the session's own temporary table
             THEN c.relnamespace = pg_my_temp_schema()
             ELSE n.nspname = CASE WHEN array_length(parts, 1) >= 2
                                   THEN lower(parts[array_length(parts, 1) - 1]) ELSE 'dbo' END END
    AND c.relkind IN ('r', 'v', 'p', 'i')
    AND (kind IS NULL OR (upper(trim(kind)) = 'U' AND c.relkind IN ('r', 'p'))
         OR (upper(trim(kind)) = 'V' AND c.relkind = 'v'))
  LIMIT 1
$$;

-- IDENT_CURRENT('table'): the last identity value generated for the table
-- by any session, or the seed if none was.
CREATE OR REPLACE FUNCTION mssql_standin.ident_current(name text) RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
DECLARE
  oid_ int := mssql_standin.object_id(name);
  col text;
  seq text;
  v numeric;
  called bool;
BEGIN
  SELECT lower(c.column_name) INTO col FROM mssql_standin.columns c
   WHERE c.table_oid = oid_::oid AND c.is_identity;
  IF col IS NULL THEN RETURN NULL; END IF;
  seq := pg_get_serial_sequence(oid_::oid::regclass::text, col);
  EXECUTE format('SELECT last_value, is_called FROM %s', seq) INTO v, called;
  RETURN v;
END $$;

-- After explicit inserts under IDENTITY_INSERT: move the identity past the
-- largest value, never back.
CREATE OR REPLACE FUNCTION mssql_standin.bump_identity(tbl text, col text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  seq text := pg_get_serial_sequence(tbl, col);
  m bigint;
  cur bigint;
  called bool;
  inc bigint;
BEGIN
  IF seq IS NULL THEN RETURN; END IF;
  EXECUTE format('SELECT max(%I) FROM %s', col, tbl) INTO m;
  IF m IS NULL THEN RETURN; END IF;
  EXECUTE format('SELECT last_value, is_called FROM %s', seq) INTO cur, called;
  SELECT seqincrement INTO inc FROM pg_sequence WHERE seqrelid = seq::regclass;
  IF NOT called THEN cur := cur - inc; END IF;
  IF (inc > 0 AND m > cur) OR (inc < 0 AND m < cur) THEN
    PERFORM setval(seq, m, true);
  END IF;
END $$;

CREATE OR REPLACE FUNCTION mssql_standin.columnproperty(id int, col text, prop text) RETURNS int
LANGUAGE sql STABLE AS $$
  SELECT CASE lower(prop)
    WHEN 'isidentity' THEN c.is_identity::int
    WHEN 'allowsnull' THEN c.is_nullable::int
    ELSE NULL END
  FROM mssql_standin.columns c
  WHERE c.table_oid = id::oid AND lower(c.column_name) = lower(col)
$$;

CREATE OR REPLACE FUNCTION mssql_standin.datediff(part text, a timestamp, b timestamp) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
  SELECT (CASE lower(part)
    WHEN 'year' THEN extract(year FROM b) - extract(year FROM a)
    WHEN 'yy' THEN extract(year FROM b) - extract(year FROM a)
    WHEN 'month' THEN (extract(year FROM b) - extract(year FROM a)) * 12 + extract(month FROM b) - extract(month FROM a)
    WHEN 'mm' THEN (extract(year FROM b) - extract(year FROM a)) * 12 + extract(month FROM b) - extract(month FROM a)
    WHEN 'day' THEN b::date - a::date
    WHEN 'dd' THEN b::date - a::date
    WHEN 'hour' THEN (extract(epoch FROM date_trunc('hour', b)) - extract(epoch FROM date_trunc('hour', a))) / 3600
    WHEN 'minute' THEN (extract(epoch FROM date_trunc('minute', b)) - extract(epoch FROM date_trunc('minute', a))) / 60
    WHEN 'mi' THEN (extract(epoch FROM date_trunc('minute', b)) - extract(epoch FROM date_trunc('minute', a))) / 60
    WHEN 'second' THEN extract(epoch FROM date_trunc('second', b)) - extract(epoch FROM date_trunc('second', a))
    WHEN 'ss' THEN extract(epoch FROM date_trunc('second', b)) - extract(epoch FROM date_trunc('second', a))
    WHEN 'millisecond' THEN (extract(epoch FROM date_trunc('milliseconds', b)) - extract(epoch FROM date_trunc('milliseconds', a))) * 1000
    WHEN 'ms' THEN (extract(epoch FROM date_trunc('milliseconds', b)) - extract(epoch FROM date_trunc('milliseconds', a))) * 1000
  END)::int
$$;

-- DATEDIFF_BIG: the same boundaries counted, as bigint, down to microseconds.
CREATE OR REPLACE FUNCTION mssql_standin.datediff_big(part text, a timestamp, b timestamp) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN lower(part) IN ('millisecond', 'ms') THEN
      ((extract(epoch FROM date_trunc('milliseconds', b)) - extract(epoch FROM date_trunc('milliseconds', a))) * 1000)::bigint
    WHEN lower(part) IN ('microsecond', 'mcs') THEN
      ((extract(epoch FROM b) - extract(epoch FROM a)) * 1000000)::bigint
    WHEN lower(part) IN ('second', 'ss', 's') THEN
      (extract(epoch FROM date_trunc('second', b)) - extract(epoch FROM date_trunc('second', a)))::bigint
    ELSE mssql_standin.datediff(part, a, b)::bigint
  END
$$;
