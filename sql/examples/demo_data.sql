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

-- Each company's Business phone and e-mail and its primary address, as Sage
-- CRM 7.2 and later keeps them: rows of their own, joined to the company by
-- link rows (EntityID 5 is Company). Every fourth company has a Fax too,
-- which the demo's Phone[Business] field must leave alone. The ids follow
-- the company ids, so each table's sequence is moved past them below.
INSERT INTO Phone (Phon_PhoneId, Phon_CountryCode, Phon_AreaCode, Phon_Number,
    Phon_CreatedBy, Phon_CreatedDate, Phon_UpdatedBy, Phon_UpdatedDate, Phon_TimeStamp)
SELECT Comp_CompanyId, Comp_PhoneCountryCode, Comp_PhoneAreaCode, '+44 20 ' || Comp_PhoneNumber,
       1, Comp_CreatedDate, 1, Comp_CreatedDate, Comp_CreatedDate
  FROM Company
UNION ALL
SELECT 10000 + Comp_CompanyId, '44', '20', '+44 20 7946 9' || lpad(Comp_CompanyId::text, 3, '0'),
       1, Comp_CreatedDate, 1, Comp_CreatedDate, Comp_CreatedDate
  FROM Company WHERE Comp_CompanyId % 4 = 0;
INSERT INTO PhoneLink (PLink_LinkID, PLink_EntityID, PLink_RecordID, PLink_Type, PLink_PhoneId,
    PLink_CreatedBy, PLink_CreatedDate, PLink_UpdatedBy, PLink_UpdatedDate, PLink_TimeStamp)
SELECT Phon_PhoneId, 5, Phon_PhoneId % 10000, CASE WHEN Phon_PhoneId > 10000 THEN 'Fax' ELSE 'Business' END,
       Phon_PhoneId, 1, Phon_CreatedDate, 1, Phon_CreatedDate, Phon_CreatedDate
  FROM Phone;
INSERT INTO Email (Emai_EmailId, Emai_EmailAddress,
    Emai_CreatedBy, Emai_CreatedDate, Emai_UpdatedBy, Emai_UpdatedDate, Emai_TimeStamp)
SELECT Comp_CompanyId, Comp_EmailAddress, 1, Comp_CreatedDate, 1, Comp_CreatedDate, Comp_CreatedDate
  FROM Company WHERE Comp_EmailAddress IS NOT NULL;
INSERT INTO EmailLink (ELink_LinkID, ELink_EntityID, ELink_RecordID, ELink_Type, ELink_EmailId,
    ELink_CreatedBy, ELink_CreatedDate, ELink_UpdatedBy, ELink_UpdatedDate, ELink_TimeStamp)
SELECT Emai_EmailId, 5, Emai_EmailId, 'Business', Emai_EmailId,
       1, Emai_CreatedDate, 1, Emai_CreatedDate, Emai_CreatedDate
  FROM Email;
INSERT INTO Address (Addr_AddressId, Addr_Address1, Addr_City, Addr_PostCode, Addr_Country,
    Addr_CreatedBy, Addr_CreatedDate, Addr_UpdatedBy, Addr_UpdatedDate, Addr_TimeStamp, Addr_SecTerr)
SELECT Comp_CompanyId, Comp_CompanyId || ' High Street',
       (ARRAY['London', 'München', 'Kraków', 'São Paulo', '東京', 'Reykjavík'])[1 + Comp_CompanyId % 6],
       'PC' || Comp_CompanyId, 'GB', 1, Comp_CreatedDate, 1, Comp_CreatedDate, Comp_CreatedDate,
       -2147483640
  FROM Company;
INSERT INTO Address_Link (AdLi_AddressLinkId, AdLi_AddressId, AdLi_CompanyID, AdLi_Type,
    AdLi_CreatedBy, AdLi_CreatedDate, AdLi_UpdatedBy, AdLi_UpdatedDate, AdLi_TimeStamp, AdLi_SecTerr)
SELECT Addr_AddressId, Addr_AddressId, Addr_AddressId, 'Billing',
       1, Addr_CreatedDate, 1, Addr_CreatedDate, Addr_CreatedDate, -2147483640
  FROM Address;
UPDATE Company SET Comp_PrimaryAddressId = Comp_CompanyId;
DO $$
BEGIN
    PERFORM setval(pg_get_serial_sequence('phone', 'phon_phoneid'), max(Phon_PhoneId)) FROM Phone;
    PERFORM setval(pg_get_serial_sequence('phonelink', 'plink_linkid'), max(PLink_LinkID)) FROM PhoneLink;
    PERFORM setval(pg_get_serial_sequence('email', 'emai_emailid'), max(Emai_EmailId)) FROM Email;
    PERFORM setval(pg_get_serial_sequence('emaillink', 'elink_linkid'), max(ELink_LinkID)) FROM EmailLink;
    PERFORM setval(pg_get_serial_sequence('address', 'addr_addressid'), max(Addr_AddressId)) FROM Address;
    PERFORM setval(pg_get_serial_sequence('address_link', 'adli_addresslinkid'), max(AdLi_AddressLinkId))
       FROM Address_Link;
END
$$;

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
