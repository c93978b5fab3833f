-- The example ERP tables of erp_schema.sql (suppliers, and contacts with a
-- foreign key to them), for an external database on SQL Server (2016 or
-- later). Same columns and meanings.
--
-- Load into an empty database:  sqlcmd -b -i erp_schema_mssql.sql

CREATE SCHEMA erp;
GO

CREATE TABLE erp.supplier (
    supplier_id     bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,
    -- the CRM's Comp_CompanyId: makes every insert findable on retry
    crm_company_id  int NULL,
    name            nvarchar(60) NOT NULL,
    status          nchar(1) NULL,               -- 'A' active, 'I' inactive
    website         nvarchar(100) NULL,
    phone           nvarchar(40) NULL,
    email           nvarchar(255) NULL,
    city            nvarchar(30) NULL,
    promote         bit NOT NULL DEFAULT 0,
    kind            nchar(1) NOT NULL DEFAULT 'S', -- 'S' supplier
    is_deleted      bit NOT NULL DEFAULT 0,
    -- crmsync stamps the rows it writes (SYSDATETIME()); the ERP's own
    -- writes must stamp it too, for instance in an AFTER UPDATE trigger
    updated_at      datetime2(3) NOT NULL DEFAULT SYSDATETIME()
);
GO

-- The change column of incremental sync, read in keyset order
-- (updated_at, supplier_id).
CREATE INDEX supplier_updated_at_id ON erp.supplier (updated_at, supplier_id);
GO

-- One ERP row per CRM company (a UNIQUE constraint would allow one NULL
-- only); looked up when a retried insert is adopted, not inserted again.
CREATE UNIQUE INDEX supplier_crm_company_id ON erp.supplier (crm_company_id)
    WHERE crm_company_id IS NOT NULL;
GO

-- A supplier's contacts: every contact belongs to a supplier (a real
-- foreign key), so crmsync writes a contact's supplier_id as the ERP key of
-- its person's company (`references = "supplier"`).
CREATE TABLE erp.contact (
    contact_id      bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,
    -- the CRM's Pers_PersonId
    crm_person_id   int NULL,
    supplier_id     bigint NOT NULL REFERENCES erp.supplier (supplier_id),
    first_name      nvarchar(30) NULL,
    last_name       nvarchar(40) NOT NULL,
    email           nvarchar(255) NULL,
    updated_at      datetime2(3) NOT NULL DEFAULT SYSDATETIME()
);
GO

CREATE INDEX contact_updated_at_id ON erp.contact (updated_at, contact_id);
GO

CREATE INDEX contact_supplier ON erp.contact (supplier_id);
GO

-- One ERP contact per CRM person (a UNIQUE constraint would allow one NULL
-- only).
CREATE UNIQUE INDEX contact_crm_person_id ON erp.contact (crm_person_id)
    WHERE crm_person_id IS NOT NULL;
GO

-- A supplier's primary contact: the two tables reference each other, as
-- Sage CRM's Comp_PrimaryPersonId and Pers_CompanyId do. It may be NULL, so
-- crmsync writes a new supplier first and names its primary contact once
-- the contact is written.
ALTER TABLE erp.supplier ADD primary_contact_id bigint NULL
    REFERENCES erp.contact (contact_id);
GO
