-- Sage CRM's published data model, as T-SQL for SQL Server 2016 and later.
--
-- The same tables, columns, lengths and indexes as sql/postgres/crm_schema.sql
-- (docs/design.md section 1), in Sage CRM's own types: nvarchar(n), nchar(1)
-- checkboxes ('Y' or NULL), datetime (local time, GETDATE(), 1/300 s
-- precision), tinyint xxx_Deleted (NULL live, 1 deleted), int IDENTITY keys.
--
-- The file is split into batches on lines containing just GO, as sqlcmd and
-- SSMS do: CREATE PROCEDURE must be alone in its batch, so the procedure is
-- the last batch and everything before it is plain DDL and INSERT ... VALUES.
--
--   sqlcmd -b -d CRM -i crm_schema.sql
--
-- Load into an empty database (dbo schema); the script is not idempotent.

-- Sage CRM's registry of tables (a subset of its columns).
CREATE TABLE dbo.Custom_Tables (
    Bord_TableId        int NOT NULL PRIMARY KEY,
    Bord_Name           nvarchar(50) NOT NULL,
    Bord_Caption        nvarchar(50),
    Bord_Prefix         nvarchar(10),
    Bord_IdField        nvarchar(50),
    Bord_CreatedBy      int,
    Bord_CreatedDate    datetime,
    Bord_UpdatedBy      int,
    Bord_UpdatedDate    datetime,
    Bord_TimeStamp      datetime,
    Bord_Deleted        tinyint
);
CREATE UNIQUE INDEX IDX_Bord_Name ON dbo.Custom_Tables (Bord_Name);

-- Next id per table, used by eware_get_identity_id on installs whose keys
-- are not IDENTITY columns.
CREATE TABLE dbo.SQL_Identity (
    Id_TableId          int NOT NULL PRIMARY KEY,
    Id_NextId           int NOT NULL
);

-- Territory ids are not drawn from an IDENTITY: Sage CRM gives each
-- territory a slice of the int range below its parent's id, so that a
-- territory and all its children form one numeric range. The root is
-- -2147483640.
CREATE TABLE dbo.Territories (
    Terr_TerritoryID    int NOT NULL PRIMARY KEY,
    Terr_Caption        nvarchar(40),
    Terr_ParentID       int,
    Terr_CreatedBy      int,
    Terr_CreatedDate    datetime,
    Terr_UpdatedBy      int,
    Terr_UpdatedDate    datetime,
    Terr_TimeStamp      datetime,
    Terr_Deleted        tinyint,
    Terr_SecTerr        int
);
CREATE INDEX IDX_Terr_ParentID ON dbo.Territories (Terr_ParentID);

CREATE TABLE dbo.Users (
    User_UserId             int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    User_Logon              nvarchar(30),
    User_FirstName          nvarchar(30),
    User_LastName           nvarchar(40),
    User_Language           nvarchar(40),
    User_Department         nvarchar(40),
    User_EmailAddress       nvarchar(255),
    User_PhoneNumber        nvarchar(40),
    User_Resource           nchar(1),
    User_Disabled           nchar(1),
    User_Per_Admin          nvarchar(40),
    User_PrimaryTerritory   int,
    User_PrimaryChannelId   int,
    User_CreatedBy          int,
    User_CreatedDate        datetime,
    User_UpdatedBy          int,
    User_UpdatedDate        datetime,
    User_TimeStamp          datetime,
    User_Deleted            tinyint,
    User_SecTerr            int
);
CREATE INDEX IDX_User_Logon ON dbo.Users (User_Logon);
CREATE INDEX IDX_User_QUICKFIND_Deleted_UpdatedDate ON dbo.Users (User_Deleted, User_UpdatedDate);

-- ---------------------------------------------------------------------------
-- Main entities
-- ---------------------------------------------------------------------------

CREATE TABLE dbo.Company (
    Comp_CompanyId          int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    Comp_PrimaryPersonId    int,
    Comp_PrimaryAddressId   int,
    Comp_PrimaryUserId      int,
    Comp_Name               nvarchar(60),
    Comp_Type               nvarchar(40),
    Comp_Status             nvarchar(40),
    Comp_Source             nvarchar(40),
    Comp_Territory          nvarchar(40),
    Comp_Revenue            nvarchar(40),
    Comp_Employees          nvarchar(40),
    Comp_Sector             nvarchar(40),
    Comp_IndCode            nvarchar(40),
    Comp_WebSite            nvarchar(100),
    Comp_MailRestriction    nvarchar(40),
    Comp_LibraryDir         nvarchar(255),
    Comp_SegmentID          int,
    Comp_SLAId              int,
    Comp_EmailAddress       nvarchar(255),
    Comp_PhoneCountryCode   nvarchar(5),
    Comp_PhoneAreaCode      nvarchar(20),
    Comp_PhoneNumber        nvarchar(40),
    -- custom fields, added through the CRM customizer (lower case, as Sage
    -- CRM names them)
    comp_promote            nchar(1),
    comp_supplierid         nvarchar(40),
    -- integration fields
    comp_intforeignid       nvarchar(255),
    comp_intlastsyncdate    datetime,
    -- system columns
    Comp_CreatedBy          int,
    Comp_CreatedDate        datetime,
    Comp_UpdatedBy          int,
    Comp_UpdatedDate        datetime,
    Comp_TimeStamp          datetime,
    Comp_Deleted            tinyint,
    Comp_SecTerr            int,
    Comp_ChannelId          int,
    Comp_WorkflowId         int
);
CREATE INDEX IDX_Comp_Name ON dbo.Company (Comp_Name);
CREATE INDEX IDX_Comp_QUICKFIND_Deleted_UpdatedDate ON dbo.Company (Comp_Deleted, Comp_UpdatedDate);
CREATE INDEX IDX_Comp_UpdatedDate_CompanyId ON dbo.Company (Comp_UpdatedDate, Comp_CompanyId);
-- The link to the external record is one to one among live rows (a filtered
-- index, SQL Server 2008 and later).
CREATE UNIQUE INDEX IDX_comp_supplierid ON dbo.Company (comp_supplierid)
    WHERE Comp_Deleted IS NULL AND comp_supplierid IS NOT NULL;

CREATE TABLE dbo.Person (
    Pers_PersonId           int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    Pers_CompanyId          int,
    Pers_PrimaryAddressId   int,
    Pers_PrimaryUserId      int,
    Pers_Salutation         nvarchar(40),
    Pers_FirstName          nvarchar(30),
    Pers_LastName           nvarchar(40),
    Pers_MiddleName         nvarchar(30),
    Pers_Suffix             nvarchar(20),
    Pers_Gender             nvarchar(40),
    Pers_Title              nvarchar(30),
    Pers_TitleCode          nvarchar(40),
    Pers_Department         nvarchar(40),
    Pers_Status             nvarchar(40),
    Pers_Source             nvarchar(40),
    Pers_Territory          nvarchar(40),
    Pers_WebSite            nvarchar(100),
    Pers_MailRestriction    nvarchar(40),
    Pers_EmailAddress       nvarchar(255),
    Pers_PhoneCountryCode   nvarchar(5),
    Pers_PhoneAreaCode      nvarchar(20),
    Pers_PhoneNumber        nvarchar(40),
    pers_intforeignid       nvarchar(255),
    pers_intlastsyncdate    datetime,
    Pers_CreatedBy          int,
    Pers_CreatedDate        datetime,
    Pers_UpdatedBy          int,
    Pers_UpdatedDate        datetime,
    Pers_TimeStamp          datetime,
    Pers_Deleted            tinyint,
    Pers_SecTerr            int,
    Pers_ChannelId          int,
    Pers_WorkflowId         int
);
CREATE INDEX IDX_Pers_CompanyId ON dbo.Person (Pers_CompanyId);
CREATE INDEX IDX_Pers_LastName ON dbo.Person (Pers_LastName, Pers_FirstName);
CREATE INDEX IDX_Pers_QUICKFIND_Deleted_UpdatedDate ON dbo.Person (Pers_Deleted, Pers_UpdatedDate);
CREATE INDEX IDX_Pers_UpdatedDate_PersonId ON dbo.Person (Pers_UpdatedDate, Pers_PersonId);

CREATE TABLE dbo.Address (
    Addr_AddressId          int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    Addr_Address1           nvarchar(40),
    Addr_Address2           nvarchar(40),
    Addr_Address3           nvarchar(40),
    Addr_Address4           nvarchar(40),
    Addr_Address5           nvarchar(40),
    Addr_City               nvarchar(30),
    Addr_State              nvarchar(30),
    Addr_Country            nvarchar(40),
    Addr_PostCode           nvarchar(10),
    addr_intforeignid       nvarchar(255),
    addr_intlastsyncdate    datetime,
    Addr_CreatedBy          int,
    Addr_CreatedDate        datetime,
    Addr_UpdatedBy          int,
    Addr_UpdatedDate        datetime,
    Addr_TimeStamp          datetime,
    Addr_Deleted            tinyint,
    Addr_SecTerr            int
);
CREATE INDEX IDX_Addr_QUICKFIND_Deleted_UpdatedDate ON dbo.Address (Addr_Deleted, Addr_UpdatedDate);
CREATE INDEX IDX_Addr_UpdatedDate_AddressId ON dbo.Address (Addr_UpdatedDate, Addr_AddressId);

CREATE TABLE dbo.Address_Link (
    AdLi_AddressLinkId      int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    AdLi_AddressId          int,
    AdLi_CompanyID          int,
    AdLi_PersonID           int,
    AdLi_Type               nvarchar(40),
    AdLi_CreatedBy          int,
    AdLi_CreatedDate        datetime,
    AdLi_UpdatedBy          int,
    AdLi_UpdatedDate        datetime,
    AdLi_TimeStamp          datetime,
    AdLi_Deleted            tinyint,
    AdLi_SecTerr            int
);
CREATE INDEX IDX_AdLi_AddressId ON dbo.Address_Link (AdLi_AddressId);
CREATE INDEX IDX_AdLi_CompanyID ON dbo.Address_Link (AdLi_CompanyID);
CREATE INDEX IDX_AdLi_PersonID ON dbo.Address_Link (AdLi_PersonID);
CREATE INDEX IDX_AdLi_QUICKFIND_Deleted_UpdatedDate ON dbo.Address_Link (AdLi_Deleted, AdLi_UpdatedDate);
CREATE INDEX IDX_AdLi_UpdatedDate_AddressLinkId ON dbo.Address_Link (AdLi_UpdatedDate, AdLi_AddressLinkId);

-- Phones and e-mails (Sage CRM 7.2 and later) are rows of their own, joined
-- to a company or person through a link table: EntityID is the parent's
-- Custom_Tables id (5 Company, 13 Person), RecordID its key, Type a
-- custom_captions code such as 'Business', 'Fax' or 'Mobile'. Sage CRM's
-- CRMEmailPhoneData is maintained by triggers on the link tables and is left
-- out here. The UpdatedDate indexes serve crmsync's change reads of child
-- fields (a child or link row that moved marks its parent changed).
CREATE TABLE dbo.Phone (
    Phon_PhoneId            int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    Phon_CountryCode        nvarchar(5),
    Phon_AreaCode           nvarchar(20),
    Phon_Number             nvarchar(34),
    Phon_CreatedBy          int,
    Phon_CreatedDate        datetime,
    Phon_UpdatedBy          int,
    Phon_UpdatedDate        datetime,
    Phon_TimeStamp          datetime,
    Phon_Deleted            tinyint
);
CREATE INDEX IDX_Phon_QUICKFIND_Deleted_UpdatedDate ON dbo.Phone (Phon_Deleted, Phon_UpdatedDate);
CREATE INDEX IDX_Phon_UpdatedDate_PhoneId ON dbo.Phone (Phon_UpdatedDate, Phon_PhoneId);

CREATE TABLE dbo.PhoneLink (
    PLink_LinkID            int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    PLink_EntityID          int,
    PLink_RecordID          int,
    PLink_Type              nvarchar(40),
    PLink_PhoneId           int,
    PLink_CreatedBy         int,
    PLink_CreatedDate       datetime,
    PLink_UpdatedBy         int,
    PLink_UpdatedDate       datetime,
    PLink_TimeStamp         datetime,
    PLink_Deleted           tinyint
);
CREATE INDEX IDX_PLink_EntityID_RecordID_Type ON dbo.PhoneLink (PLink_EntityID, PLink_RecordID, PLink_Type);
CREATE INDEX IDX_PLink_PhoneId ON dbo.PhoneLink (PLink_PhoneId);
CREATE INDEX IDX_PLink_UpdatedDate_LinkID ON dbo.PhoneLink (PLink_UpdatedDate, PLink_LinkID);

CREATE TABLE dbo.Email (
    Emai_EmailId            int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    Emai_EmailAddress       nvarchar(255),
    Emai_CreatedBy          int,
    Emai_CreatedDate        datetime,
    Emai_UpdatedBy          int,
    Emai_UpdatedDate        datetime,
    Emai_TimeStamp          datetime,
    Emai_Deleted            tinyint
);
CREATE INDEX IDX_Emai_QUICKFIND_Deleted_UpdatedDate ON dbo.Email (Emai_Deleted, Emai_UpdatedDate);
CREATE INDEX IDX_Emai_UpdatedDate_EmailId ON dbo.Email (Emai_UpdatedDate, Emai_EmailId);

CREATE TABLE dbo.EmailLink (
    ELink_LinkID            int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    ELink_EntityID          int,
    ELink_RecordID          int,
    ELink_Type              nvarchar(40),
    ELink_EmailId           int,
    ELink_CreatedBy         int,
    ELink_CreatedDate       datetime,
    ELink_UpdatedBy         int,
    ELink_UpdatedDate       datetime,
    ELink_TimeStamp         datetime,
    ELink_Deleted           tinyint
);
CREATE INDEX IDX_ELink_EntityID_RecordID_Type ON dbo.EmailLink (ELink_EntityID, ELink_RecordID, ELink_Type);
CREATE INDEX IDX_ELink_EmailId ON dbo.EmailLink (ELink_EmailId);
CREATE INDEX IDX_ELink_UpdatedDate_LinkID ON dbo.EmailLink (ELink_UpdatedDate, ELink_LinkID);

-- Money is numeric(24,6) with a currency id column (_CID) beside it.
CREATE TABLE dbo.Opportunity (
    Oppo_OpportunityId      int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    Oppo_PrimaryCompanyId   int,
    Oppo_PrimaryPersonId    int,
    Oppo_AssignedUserId     int,
    Oppo_Description        nvarchar(80),
    Oppo_Type               nvarchar(40),
    Oppo_Product            nvarchar(40),
    Oppo_Source             nvarchar(40),
    Oppo_Note               nvarchar(max),
    Oppo_CustomerRef        nvarchar(20),
    Oppo_Status             nvarchar(40),
    Oppo_Stage              nvarchar(40),
    Oppo_Priority           nvarchar(40),
    Oppo_Certainty          int,
    Oppo_Forecast           numeric(24,6),
    Oppo_Forecast_CID       int,
    Oppo_Total              numeric(24,6),
    Oppo_Total_CID          int,
    Oppo_TargetClose        datetime,
    Oppo_Opened             datetime,
    Oppo_Closed             datetime,
    oppo_intforeignid       nvarchar(255),
    oppo_intlastsyncdate    datetime,
    Oppo_CreatedBy          int,
    Oppo_CreatedDate        datetime,
    Oppo_UpdatedBy          int,
    Oppo_UpdatedDate        datetime,
    Oppo_TimeStamp          datetime,
    Oppo_Deleted            tinyint,
    Oppo_SecTerr            int,
    Oppo_ChannelId          int,
    Oppo_WorkflowId         int
);
CREATE INDEX IDX_Oppo_PrimaryCompanyId ON dbo.Opportunity (Oppo_PrimaryCompanyId);
CREATE INDEX IDX_Oppo_PrimaryPersonId ON dbo.Opportunity (Oppo_PrimaryPersonId);
CREATE INDEX IDX_Oppo_QUICKFIND_Deleted_UpdatedDate ON dbo.Opportunity (Oppo_Deleted, Oppo_UpdatedDate);
CREATE INDEX IDX_Oppo_UpdatedDate_OpportunityId ON dbo.Opportunity (Oppo_UpdatedDate, Oppo_OpportunityId);

CREATE TABLE dbo.Cases (
    Case_CaseId             int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    Case_PrimaryCompanyId   int,
    Case_PrimaryPersonId    int,
    Case_AssignedUserId     int,
    Case_ReferenceId        nvarchar(20),
    Case_Description        nvarchar(255),
    Case_Status             nvarchar(40),
    Case_Stage              nvarchar(40),
    Case_Priority           nvarchar(40),
    Case_Product            nvarchar(40),
    Case_Source             nvarchar(40),
    Case_ProblemNote        nvarchar(max),
    Case_SolutionNote       nvarchar(max),
    Case_Opened             datetime,
    Case_Closed             datetime,
    case_intforeignid       nvarchar(255),
    case_intlastsyncdate    datetime,
    Case_CreatedBy          int,
    Case_CreatedDate        datetime,
    Case_UpdatedBy          int,
    Case_UpdatedDate        datetime,
    Case_TimeStamp          datetime,
    Case_Deleted            tinyint,
    Case_SecTerr            int,
    Case_ChannelId          int,
    Case_WorkflowId         int
);
CREATE INDEX IDX_Case_PrimaryCompanyId ON dbo.Cases (Case_PrimaryCompanyId);
CREATE INDEX IDX_Case_PrimaryPersonId ON dbo.Cases (Case_PrimaryPersonId);
CREATE INDEX IDX_Case_QUICKFIND_Deleted_UpdatedDate ON dbo.Cases (Case_Deleted, Case_UpdatedDate);
CREATE INDEX IDX_Case_UpdatedDate_CaseId ON dbo.Cases (Case_UpdatedDate, Case_CaseId);

-- Seed rows. Keys are written explicitly only where the column is not an
-- IDENTITY; the users get ids 1 and 2 from IDENTITY(1,1).

INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (1, N'Address', N'Address', N'Addr', N'Addr_AddressId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (2, N'Address_Link', N'Address Link', N'AdLi', N'AdLi_AddressLinkId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (3, N'Cases', N'Cases', N'Case', N'Case_CaseId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (5, N'Company', N'Company', N'Comp', N'Comp_CompanyId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (10, N'Opportunity', N'Opportunity', N'Oppo', N'Oppo_OpportunityId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (13, N'Person', N'Person', N'Pers', N'Pers_PersonId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (16, N'Territories', N'Territories', N'Terr', N'Terr_TerritoryID', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (17, N'Users', N'Users', N'User', N'User_UserId', 1, GETDATE(), 1, GETDATE(), GETDATE());

INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (120, N'Phone', N'Phone', N'Phon', N'Phon_PhoneId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (121, N'PhoneLink', N'Phone Link', N'PLink', N'PLink_LinkID', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (122, N'Email', N'Email', N'Emai', N'Emai_EmailId', 1, GETDATE(), 1, GETDATE(), GETDATE());
INSERT INTO dbo.Custom_Tables (Bord_TableId, Bord_Name, Bord_Caption, Bord_Prefix, Bord_IdField, Bord_CreatedBy, Bord_CreatedDate, Bord_UpdatedBy, Bord_UpdatedDate, Bord_TimeStamp)
VALUES (123, N'EmailLink', N'Email Link', N'ELink', N'ELink_LinkID', 1, GETDATE(), 1, GETDATE(), GETDATE());

INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (1, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (2, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (3, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (5, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (10, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (13, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (16, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (17, 3);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (120, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (121, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (122, 1);
INSERT INTO dbo.SQL_Identity (Id_TableId, Id_NextId) VALUES (123, 1);

-- The root territory and two children: each child owns a 2^28 - 1 wide slice.
INSERT INTO dbo.Territories (Terr_TerritoryID, Terr_Caption, Terr_ParentID, Terr_CreatedBy, Terr_CreatedDate, Terr_UpdatedBy, Terr_UpdatedDate, Terr_TimeStamp, Terr_SecTerr)
VALUES (-2147483640, N'Worldwide', NULL, 1, GETDATE(), 1, GETDATE(), GETDATE(), -2147483640);
INSERT INTO dbo.Territories (Terr_TerritoryID, Terr_Caption, Terr_ParentID, Terr_CreatedBy, Terr_CreatedDate, Terr_UpdatedBy, Terr_UpdatedDate, Terr_TimeStamp, Terr_SecTerr)
VALUES (-1879048185, N'Europe', -2147483640, 1, GETDATE(), 1, GETDATE(), GETDATE(), -2147483640);
INSERT INTO dbo.Territories (Terr_TerritoryID, Terr_Caption, Terr_ParentID, Terr_CreatedBy, Terr_CreatedDate, Terr_UpdatedBy, Terr_UpdatedDate, Terr_TimeStamp, Terr_SecTerr)
VALUES (-1610612730, N'North America', -2147483640, 1, GETDATE(), 1, GETDATE(), GETDATE(), -2147483640);

-- User 1 is Sage CRM's administrator; user 2 is a dedicated sync user whose
-- id can go in crmsync's [crm] user_id.
INSERT INTO dbo.Users (User_Logon, User_FirstName, User_LastName, User_Language, User_EmailAddress, User_Per_Admin, User_PrimaryTerritory, User_CreatedBy, User_CreatedDate, User_UpdatedBy, User_UpdatedDate, User_TimeStamp, User_SecTerr)
VALUES (N'Admin', N'System', N'Administrator', N'US', N'admin@example.com', N'3', -2147483640, 1, GETDATE(), 1, GETDATE(), GETDATE(), -2147483640);
INSERT INTO dbo.Users (User_Logon, User_FirstName, User_LastName, User_Language, User_EmailAddress, User_Per_Admin, User_PrimaryTerritory, User_CreatedBy, User_CreatedDate, User_UpdatedBy, User_UpdatedDate, User_TimeStamp, User_SecTerr)
VALUES (N'crmsync', N'Sync', N'Service', N'US', N'crmsync@example.com', N'1', -2147483640, 1, GETDATE(), 1, GETDATE(), GETDATE(), -2147483640);

GO

-- Sage CRM's id allocator for tables whose keys are not IDENTITY columns:
--   DECLARE @id int; EXEC @id = eware_get_identity_id 'Company';
-- Returns the table's next id and moves SQL_Identity on by one in a single
-- UPDATE: the row's exclusive lock serialises concurrent callers, so no two
-- callers get the same id. "SET @id = column, column = expression" assigns
-- the value from before the update. The allocation is part of the caller's
-- transaction. This allocator and an IDENTITY column know nothing of each
-- other: a table gets its keys from one or the other, never both.
CREATE PROCEDURE dbo.eware_get_identity_id (@table_name nvarchar(128))
AS
BEGIN
    SET NOCOUNT ON;
    DECLARE @id int;
    UPDATE i
       SET @id = i.Id_NextId,
           i.Id_NextId = i.Id_NextId + 1
      FROM dbo.SQL_Identity AS i
      JOIN dbo.Custom_Tables AS t ON t.Bord_TableId = i.Id_TableId
     WHERE t.Bord_Name = @table_name;
    IF @id IS NULL
    BEGIN
        RAISERROR(N'eware_get_identity_id: no SQL_Identity row for table %s', 16, 1, @table_name);
        RETURN 0;
    END;
    RETURN @id;
END
