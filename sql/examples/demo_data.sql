-- Demo data for the CRM database: 300 companies, written the way Sage CRM
-- writes them. Load after sql/postgres/crm_schema.sql, into a database whose
-- TimeZone is the zone of crmsync's [crm] timezone (scripts/demo sets
-- Europe/London), because Sage CRM's dates are local time:
--
--   psql -v ON_ERROR_STOP=1 -f demo_data.sql
--
-- What the rows exercise:
--   * names with accents, a quote, CJK, Hangul and an emoji (an emoji is one
--     character in PostgreSQL but two UTF-16 code units in nvarchar);
--   * about 80% Comp_Type = 'Supplier' (the demo entity's crm_filter), the
--     rest 'Customer';
--   * six soft-deleted rows (Comp_Deleted = 1), which the first sync skips;
--   * ten rows per timestamp: a watermark must never split such a group;
--   * millisecond fractions .000/.003/.007, as SQL Server's datetime has.

BEGIN;

INSERT INTO Company (
    Comp_PrimaryUserId, Comp_Name, Comp_Type, Comp_Status, Comp_Source,
    Comp_Revenue, Comp_Employees, Comp_Sector, Comp_WebSite, Comp_EmailAddress,
    Comp_PhoneCountryCode, Comp_PhoneAreaCode, Comp_PhoneNumber, comp_promote,
    Comp_CreatedBy, Comp_CreatedDate, Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp,
    Comp_Deleted, Comp_SecTerr
)
SELECT
    1,
    (ARRAY['Acme', 'Müller', 'Société Générale', 'Øresund', 'Ångström', 'Zoë''s',
           'Łódź', 'São Paulo', 'Crème Brûlée', 'Großhandel', '東京', '北京',
           '서울', 'O''Brien', 'Atlas', 'Dvořák', 'Café ☕', 'Ñandú', '🚀 Rocket',
           'Nordic'])[1 + g.i % 20]
      || ' '
      || (ARRAY['Trading', 'GmbH', '& Fils', 'Logistik', 'Import', '精密工業',
                '电子有限公司', 'Holdings', 'Supplies', 'Ltd', 'S.A.', 'A/S',
                'Oy'])[1 + g.i % 13]
      || ' ' || g.i,
    CASE WHEN g.i % 5 = 0 THEN 'Customer' ELSE 'Supplier' END,
    CASE WHEN g.i % 9 = 0 THEN 'Inactive' ELSE 'Active' END,
    (ARRAY['Web', 'Trade Show', 'Referral', 'Advertising'])[1 + g.i % 4],
    (ARRAY['1', '2', '3', '4'])[1 + g.i % 4],
    (ARRAY['1', '2', '3', '4', '5'])[1 + g.i % 5],
    (ARRAY['Manufacturing', 'Retail', 'Services', 'Technology'])[1 + g.i % 4],
    'www.company' || g.i || '.example.com',
    'info@company' || g.i || '.example.com',
    '44', '20', '7946 ' || lpad(g.i::text, 4, '0'),
    CASE WHEN g.i % 3 = 0 THEN 'Y' END,
    -- Created by the administrator; on insert all three dates are equal.
    1, g.created, 1,
    CASE WHEN g.i % 47 = 0 THEN g.created + interval '1 hour' ELSE g.created END,
    CASE WHEN g.i % 47 = 0 THEN g.created + interval '1 hour' ELSE g.created END,
    CASE WHEN g.i % 47 = 0 THEN 1 END,
    -2147483640
FROM (
    -- ten rows per minute, with the .000/.003/.007 fractions of a datetime
    SELECT i,
           date_trunc('second', localtimestamp(3)) - interval '2 days'
             + (i / 10) * interval '1 minute'
             + ((i / 10) % 3) * interval '3.333 milliseconds' AS created
    FROM generate_series(1, 300) AS i
) AS g
ORDER BY g.i;

-- Two persons under each live supplier among the first 40 companies. (A
-- customer's person would have no ERP supplier to go under: crmsync would
-- hold it, with the reason, until its company became a supplier.)
INSERT INTO Person (Pers_CompanyId, Pers_FirstName, Pers_LastName, Pers_EmailAddress,
    Pers_CreatedBy, Pers_CreatedDate, Pers_UpdatedBy, Pers_UpdatedDate, Pers_TimeStamp,
    Pers_SecTerr)
SELECT c.Comp_CompanyId,
       (ARRAY['Anna', 'Jürgen', 'Zoë', 'Kenji'])[1 + (c.Comp_CompanyId + n) % 4],
       'Contact ' || c.Comp_CompanyId || '-' || n,
       'contact' || n || '@company' || c.Comp_CompanyId || '.example.com',
       1, c.Comp_CreatedDate, 1, c.Comp_CreatedDate, c.Comp_CreatedDate, -2147483640
  FROM Company c, generate_series(1, 2) AS n
 WHERE c.Comp_CompanyId <= 40 AND c.Comp_Deleted IS NULL AND c.Comp_Type = 'Supplier'
 ORDER BY c.Comp_CompanyId, n;

-- The first of them is the company's primary person (company and person
-- reference each other).
UPDATE Company c
   SET Comp_PrimaryPersonId = (SELECT min(p.Pers_PersonId) FROM Person p
                                WHERE p.Pers_CompanyId = c.Comp_CompanyId)
 WHERE EXISTS (SELECT 1 FROM Person p WHERE p.Pers_CompanyId = c.Comp_CompanyId);

-- Keep the pre-7.2 allocator ahead of the ids IDENTITY handed out.
UPDATE SQL_Identity
   SET Id_NextId = (SELECT coalesce(max(Comp_CompanyId), 0) + 1 FROM Company)
 WHERE Id_TableId = (SELECT Bord_TableId FROM Custom_Tables WHERE Bord_Name = 'Company');

COMMIT;

SELECT Comp_Type AS type,
       count(*) FILTER (WHERE Comp_Deleted IS NULL) AS live,
       count(*) FILTER (WHERE Comp_Deleted = 1) AS deleted
  FROM Company
 GROUP BY Comp_Type
 ORDER BY Comp_Type;
