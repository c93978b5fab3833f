-- INFORMATION_SCHEMA and sys views as SQL Server shows them, over the side
-- catalog (declared types) and PostgreSQL's own catalog (tables, indexes).
-- Bit columns are int2 so that `is_identity = 1` compares as in T-SQL.
CREATE SCHEMA IF NOT EXISTS mssql_sys;
CREATE SCHEMA IF NOT EXISTS mssql_information_schema;

CREATE OR REPLACE VIEW mssql_information_schema.tables AS
SELECT DISTINCT current_database()::text AS table_catalog, c.table_schema, c.table_name,
       'BASE TABLE'::text AS table_type
FROM mssql_standin.columns c JOIN pg_class k ON k.oid = c.table_oid
WHERE c.table_schema NOT IN ('sys', 'INFORMATION_SCHEMA');

CREATE OR REPLACE VIEW mssql_information_schema.columns AS
SELECT current_database()::text AS table_catalog, c.table_schema, c.table_name, c.column_name,
       c.ordinal AS ordinal_position, c.default_text AS column_default,
       CASE WHEN c.is_nullable THEN 'YES' ELSE 'NO' END::text AS is_nullable,
       c.data_type, c.char_length AS character_maximum_length,
       CASE WHEN c.char_length = -1 THEN -1
            WHEN c.data_type IN ('nvarchar', 'nchar') THEN c.char_length * 2
            ELSE c.char_length END AS character_octet_length,
       CASE WHEN c.data_type IN ('tinyint','smallint','int','bigint','decimal','numeric','money','smallmoney','float','real')
            THEN c.num_precision::int2 END AS numeric_precision,
       CASE WHEN c.data_type IN ('tinyint','smallint','int','bigint','decimal','numeric','money','smallmoney')
            THEN c.num_scale END AS numeric_scale,
       CASE WHEN c.data_type IN ('datetime','datetime2','date','time','datetimeoffset','smalldatetime')
            THEN c.num_scale::int2 END AS datetime_precision,
       CASE WHEN c.data_type IN ('nvarchar','nchar','varchar','char')
            THEN 'SQL_Latin1_General_CP1_CI_AS' END::text AS collation_name
FROM mssql_standin.columns c JOIN pg_class k ON k.oid = c.table_oid
WHERE c.table_schema NOT IN ('sys', 'INFORMATION_SCHEMA');

-- One database, at SQL Server 2022's compatibility level (datetime
-- comparisons follow level 130+ rules).
CREATE OR REPLACE VIEW mssql_sys.databases AS
SELECT COALESCE(NULLIF(current_setting('mssql_standin.database', true), ''), current_database())::text AS name,
       5 AS database_id, 160::int2 AS compatibility_level,
       'SQL_Latin1_General_CP1_CI_AS'::text AS collation_name, 0::int2 AS is_read_only,
       'ONLINE'::text AS state_desc;

CREATE OR REPLACE VIEW mssql_information_schema.table_constraints AS
SELECT current_database()::text AS constraint_catalog, 'dbo'::text AS constraint_schema, x.name AS constraint_name,
       current_database()::text AS table_catalog, 'dbo'::text AS table_schema,
       (SELECT DISTINCT c.table_name FROM mssql_standin.columns c WHERE c.table_oid = x.table_oid) AS table_name,
       (CASE WHEN x.is_primary_key THEN 'PRIMARY KEY' ELSE 'UNIQUE' END)::text AS constraint_type
FROM mssql_standin.indexes x JOIN pg_class k ON k.oid = x.index_oid
WHERE x.is_primary_key OR x.is_unique_constraint;

CREATE OR REPLACE VIEW mssql_information_schema.key_column_usage AS
SELECT current_database()::text AS constraint_catalog, 'dbo'::text AS constraint_schema, x.name AS constraint_name,
       current_database()::text AS table_catalog, 'dbo'::text AS table_schema, c.table_name, c.column_name,
       k.ord::int AS ordinal_position
FROM mssql_standin.indexes x
JOIN pg_index i ON i.indexrelid = x.index_oid
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN mssql_standin.columns c ON c.table_oid = i.indrelid AND c.attnum = k.attnum
WHERE x.is_primary_key OR x.is_unique_constraint;

-- Every schema of the database: dbo and those CREATE SCHEMA made (not
-- PostgreSQL's own, nor the stand-in's helpers).
CREATE OR REPLACE VIEW mssql_sys.schemas AS
SELECT n.oid::int AS schema_id, n.nspname::text AS name FROM pg_namespace n
WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname NOT IN ('information_schema', 'public',
      'mssql_standin', 'mssql_sys', 'mssql_information_schema');

CREATE OR REPLACE VIEW mssql_sys.tables AS
SELECT DISTINCT c.table_name AS name, c.table_oid::int AS object_id,
       k.relnamespace::int AS schema_id,
       'U'::text AS type, 'USER_TABLE'::text AS type_desc, 0::int2 AS is_ms_shipped
FROM mssql_standin.columns c JOIN pg_class k ON k.oid = c.table_oid
WHERE c.table_schema NOT IN ('sys', 'INFORMATION_SCHEMA');

CREATE OR REPLACE VIEW mssql_sys.objects AS
SELECT name, object_id, schema_id, type, type_desc FROM mssql_sys.tables;

CREATE OR REPLACE VIEW mssql_sys.columns AS
SELECT c.table_oid::int AS object_id, c.column_name AS name, c.ordinal AS column_id,
       c.system_type_id::int2 AS system_type_id, c.system_type_id AS user_type_id,
       c.max_length::int2 AS max_length, c.num_precision::int2 AS precision, c.num_scale::int2 AS scale,
       c.is_nullable::int::int2 AS is_nullable, c.is_identity::int::int2 AS is_identity,
       0::int2 AS is_computed,
       CASE WHEN c.data_type IN ('nvarchar','nchar','varchar','char')
            THEN 'SQL_Latin1_General_CP1_CI_AS' END::text AS collation_name
FROM mssql_standin.columns c JOIN pg_class k ON k.oid = c.table_oid
WHERE c.table_schema NOT IN ('sys', 'INFORMATION_SCHEMA');

CREATE OR REPLACE VIEW mssql_sys.identity_columns AS
SELECT c.table_oid::int AS object_id, c.column_name AS name, c.ordinal AS column_id,
       c.seed AS seed_value, c.increment AS increment_value
FROM mssql_standin.columns c JOIN pg_class k ON k.oid = c.table_oid WHERE c.is_identity;

CREATE OR REPLACE VIEW mssql_sys.types AS
SELECT t.name::text AS name, t.id::int2 AS system_type_id, t.id AS user_type_id,
       t.len::int2 AS max_length, t.prec::int2 AS precision, t.scale::int2 AS scale, 1::int2 AS is_nullable
FROM (VALUES ('tinyint',48,1,3,0), ('smallint',52,2,5,0), ('int',56,4,10,0), ('bigint',127,8,19,0),
             ('bit',104,1,1,0), ('float',62,8,53,0), ('real',59,4,24,0), ('decimal',106,17,38,38),
             ('numeric',108,17,38,38), ('money',60,8,19,4), ('smallmoney',122,4,10,4),
             ('nvarchar',231,8000,0,0), ('nchar',239,8000,0,0), ('varchar',167,8000,0,0), ('char',175,8000,0,0),
             ('datetime',61,8,23,3), ('smalldatetime',58,4,16,0), ('datetime2',42,8,27,7), ('date',40,3,10,0),
             ('time',41,5,16,7), ('datetimeoffset',43,10,34,7), ('uniqueidentifier',36,16,0,0),
             ('varbinary',165,8000,0,0), ('binary',173,8000,0,0)) AS t(name, id, len, prec, scale);

CREATE OR REPLACE VIEW mssql_sys.indexes AS
SELECT i.indrelid::int AS object_id, COALESCE(x.name, ic.relname::text) AS name,
       (CASE WHEN i.indisprimary THEN 1
             ELSE 1 + row_number() OVER (PARTITION BY i.indrelid, i.indisprimary ORDER BY i.indexrelid) END)::int AS index_id,
       (CASE WHEN i.indisprimary THEN 1 ELSE 2 END)::int2 AS type,
       (CASE WHEN i.indisprimary THEN 'CLUSTERED' ELSE 'NONCLUSTERED' END)::text AS type_desc,
       i.indisunique::int::int2 AS is_unique, i.indisprimary::int::int2 AS is_primary_key,
       COALESCE(x.is_unique_constraint, false)::int::int2 AS is_unique_constraint,
       (i.indpred IS NOT NULL)::int::int2 AS has_filter, x.filter AS filter_definition
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class tc ON tc.oid = i.indrelid
JOIN pg_namespace n ON n.oid = tc.relnamespace
LEFT JOIN mssql_standin.indexes x ON x.index_oid = i.indexrelid
WHERE n.nspname IN (SELECT name FROM mssql_sys.schemas);

CREATE OR REPLACE VIEW mssql_sys.index_columns AS
SELECT s.object_id, s.index_id, k.ord::int AS index_column_id, k.attnum::int AS column_id,
       k.ord::int2 AS key_ordinal,
       ((ix.indoption[k.ord - 1] & 1) = 1)::int::int2 AS is_descending_key, 0::int2 AS is_included_column
FROM pg_index ix
JOIN mssql_sys.indexes s ON s.object_id = ix.indrelid::int
  AND s.name = COALESCE((SELECT name FROM mssql_standin.indexes WHERE index_oid = ix.indexrelid),
                        (SELECT relname::text FROM pg_class WHERE oid = ix.indexrelid))
CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord);

CREATE OR REPLACE VIEW mssql_sys.key_constraints AS
SELECT x.name, x.table_oid::int AS parent_object_id,
       (CASE WHEN x.is_primary_key THEN 'PK' ELSE 'UQ' END)::text AS type
FROM mssql_standin.indexes x WHERE x.is_primary_key OR x.is_unique_constraint;

-- "sys.partitions": a row per partition of each heap or index, rows the
-- approximate row count; here one partition of the heap or clustered index
-- (index_id 1) per table, counted as sys.dm_db_partition_stats counts it.
CREATE OR REPLACE VIEW mssql_sys.partitions AS
SELECT k.oid::bigint AS partition_id, k.oid::int AS object_id, 1 AS index_id,
       1 AS partition_number, k.oid::bigint AS hobt_id,
       (pg_stat_get_live_tuples(k.oid) + pg_stat_get_xact_tuples_inserted(k.oid)
        - pg_stat_get_xact_tuples_deleted(k.oid))::bigint AS rows,
       0::int2 AS data_compression
FROM pg_class k
WHERE k.relkind = 'r' AND k.oid IN (SELECT table_oid FROM mssql_standin.columns);

-- Register the views' columns in the side catalog so results carry SQL
-- Server types and names (INFORMATION_SCHEMA in upper case, sys in lower).
DELETE FROM mssql_standin.columns WHERE table_schema IN ('sys', 'INFORMATION_SCHEMA');
INSERT INTO mssql_standin.columns (table_oid, attnum, table_schema, table_name, column_name, ordinal,
    type_decl, is_nullable, is_identity, data_type)
SELECT a.attrelid, a.attnum,
       CASE n.nspname WHEN 'mssql_sys' THEN 'sys' ELSE 'INFORMATION_SCHEMA' END,
       CASE n.nspname WHEN 'mssql_sys' THEN c.relname::text ELSE upper(c.relname::text) END,
       CASE n.nspname WHEN 'mssql_sys' THEN a.attname::text ELSE upper(a.attname::text) END,
       a.attnum,
       CASE WHEN n.nspname = 'mssql_information_schema' AND a.attname::text IN ('is_nullable') THEN 'varchar(3)'
            WHEN a.attname::text LIKE 'is\_%' OR a.attname::text LIKE 'has\_%' THEN 'bit'
            WHEN a.atttypid = 'int4'::regtype THEN 'int'
            WHEN a.atttypid = 'int2'::regtype AND a.attname::text = 'precision' THEN 'tinyint'
            WHEN a.atttypid = 'int2'::regtype AND a.attname::text IN ('scale', 'type', 'system_type_id', 'numeric_precision', 'compatibility_level', 'data_compression') THEN 'tinyint'
            WHEN a.atttypid = 'int2'::regtype THEN 'smallint'
            WHEN a.atttypid = 'int8'::regtype THEN 'bigint'
            WHEN a.attname::text IN ('type') THEN 'char(2)'
            ELSE 'nvarchar(128)' END,
       true, false, ''
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('mssql_sys', 'mssql_information_schema') AND a.attnum > 0 AND NOT a.attisdropped;

-- Rows per table ("sys.dm_db_partition_stats"): one partition, the heap or
-- clustered index (index_id 1), its row count as PostgreSQL's statistics
-- hold it.
CREATE OR REPLACE VIEW mssql_sys.dm_db_partition_stats AS
SELECT k.oid::int AS object_id, 1 AS index_id, 1 AS partition_number,
       (pg_stat_get_live_tuples(k.oid) + pg_stat_get_xact_tuples_inserted(k.oid)
        - pg_stat_get_xact_tuples_deleted(k.oid))::bigint AS row_count
FROM pg_class k
WHERE k.relkind = 'r' AND k.oid IN (SELECT table_oid FROM mssql_standin.columns);

-- "sys.dm_db_index_operational_stats (database_id, object_id, index_id,
-- partition_number)": cumulative leaf-level counts of one table (NULL:
-- every table), from PostgreSQL's counters (a delete is a leaf delete;
-- nothing is ghosted).
CREATE OR REPLACE FUNCTION mssql_sys.dm_db_index_operational_stats(
    p_database_id int, p_object_id int, p_index_id int, p_partition_number int)
RETURNS TABLE (database_id int, object_id int, index_id int, partition_number int,
               leaf_insert_count bigint, leaf_delete_count bigint,
               leaf_update_count bigint, leaf_ghost_count bigint)
LANGUAGE sql STABLE AS $$
SELECT 5, k.oid::int, 1, 1,
       pg_stat_get_tuples_inserted(k.oid) + pg_stat_get_xact_tuples_inserted(k.oid),
       pg_stat_get_tuples_deleted(k.oid) + pg_stat_get_xact_tuples_deleted(k.oid),
       pg_stat_get_tuples_updated(k.oid) + pg_stat_get_xact_tuples_updated(k.oid),
       0::bigint
FROM pg_class k
WHERE k.relkind = 'r' AND k.oid IN (SELECT table_oid FROM mssql_standin.columns)
  AND ($2 IS NULL OR k.oid = $2::oid)
$$;
