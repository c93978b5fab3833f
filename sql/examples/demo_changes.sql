-- Changes made "in the CRM" between the demo's two sync runs, written the way
-- Sage CRM writes them: every change moves UpdatedDate and TimeStamp to the
-- server's local time (localtimestamp is in the session's time zone, like
-- GETDATE()) and sets UpdatedBy. Load after demo_data.sql:
--
--   psql -v ON_ERROR_STOP=1 -f demo_changes.sql
--
-- Only live suppliers are touched (the demo entity's crm_filter), except one
-- customer, whose change the sync must ignore.

BEGIN;

-- Two renames.
UPDATE Company
   SET Comp_Name = 'Müller & Söhne Logistik',
       Comp_UpdatedBy = 1, Comp_UpdatedDate = localtimestamp(3), Comp_TimeStamp = localtimestamp(3)
 WHERE Comp_CompanyId = 1 AND Comp_Type = 'Supplier' AND Comp_Deleted IS NULL;

UPDATE Company
   SET Comp_Name = '大阪精密工業 株式会社',
       Comp_UpdatedBy = 1, Comp_UpdatedDate = localtimestamp(3), Comp_TimeStamp = localtimestamp(3)
 WHERE Comp_CompanyId = 2 AND Comp_Type = 'Supplier' AND Comp_Deleted IS NULL;

-- A status change (mapped through values: 'Inactive' -> 'I') and a
-- checkbox switched on ('Y' -> true) in the same row, plus a new website.
UPDATE Company
   SET Comp_Status = 'Inactive', comp_promote = 'Y', Comp_WebSite = 'www.new-site.example.com',
       Comp_UpdatedBy = 1, Comp_UpdatedDate = localtimestamp(3), Comp_TimeStamp = localtimestamp(3)
 WHERE Comp_CompanyId = 4 AND Comp_Type = 'Supplier' AND Comp_Deleted IS NULL;

-- A checkbox switched off ('Y' -> NULL -> false).
UPDATE Company
   SET comp_promote = NULL,
       Comp_UpdatedBy = 1, Comp_UpdatedDate = localtimestamp(3), Comp_TimeStamp = localtimestamp(3)
 WHERE Comp_CompanyId = 6 AND Comp_Type = 'Supplier' AND Comp_Deleted IS NULL;

-- A soft delete: Sage CRM never deletes rows, it flags them.
UPDATE Company
   SET Comp_Deleted = 1,
       Comp_UpdatedBy = 1, Comp_UpdatedDate = localtimestamp(3), Comp_TimeStamp = localtimestamp(3)
 WHERE Comp_CompanyId = 8 AND Comp_Type = 'Supplier' AND Comp_Deleted IS NULL;

-- A phone number changed on its own: only the Phone row moves, the company
-- row does not, and the sync still carries it.
UPDATE Phone
   SET Phon_Number = '+44 20 7946 1234',
       Phon_UpdatedBy = 1, Phon_UpdatedDate = localtimestamp(3), Phon_TimeStamp = localtimestamp(3)
 WHERE Phon_PhoneId = 3;

-- A customer changes: outside the filter, so no sync traffic.
UPDATE Company
   SET Comp_Name = 'Customer renamed 5',
       Comp_UpdatedBy = 1, Comp_UpdatedDate = localtimestamp(3), Comp_TimeStamp = localtimestamp(3)
 WHERE Comp_CompanyId = 5 AND Comp_Type = 'Customer';

-- Two new suppliers: on insert the three dates are equal.
INSERT INTO Company (
    Comp_PrimaryUserId, Comp_Name, Comp_Type, Comp_Status, Comp_WebSite,
    Comp_EmailAddress, Comp_PhoneNumber, comp_promote,
    Comp_CreatedBy, Comp_CreatedDate, Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp,
    Comp_SecTerr
)
VALUES
    (1, 'Ünïcödé Supplies Ltd', 'Supplier', 'Active', 'www.unicode.example.com',
     'sales@unicode.example.com', '+44 20 7946 0999', 'Y',
     1, localtimestamp(3), 1, localtimestamp(3), localtimestamp(3), -2147483640),
    (1, '深圳新供应商 🚀', 'Supplier', 'Active', NULL,
     NULL, '+86 755 0000 0000', NULL,
     1, localtimestamp(3), 1, localtimestamp(3), localtimestamp(3), -2147483640);

UPDATE SQL_Identity
   SET Id_NextId = (SELECT max(Comp_CompanyId) + 1 FROM Company)
 WHERE Id_TableId = (SELECT Bord_TableId FROM Custom_Tables WHERE Bord_Name = 'Company');

COMMIT;

SELECT Comp_CompanyId AS id, Comp_Name AS name, Comp_Type AS type, Comp_Status AS status,
       comp_promote AS promote, Comp_Deleted AS deleted, Comp_UpdatedDate AS updated
  FROM Company
 WHERE Comp_UpdatedDate > localtimestamp(3) - interval '1 minute'
 ORDER BY Comp_CompanyId;
