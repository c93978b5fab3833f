-- Changes made in the ERP between the demo's second and third runs; each
-- UPDATE moves updated_at through the table's trigger.

-- Purchasing renames a supplier and changes its phone number (the CRM's
-- Phone row is updated in place) and its city (the primary address).
UPDATE erp.supplier SET name = 'Müller & Söhne Logistik GmbH', phone = '+49 30 555 0199',
       city = 'Berlin'
 WHERE crm_company_id = 1;
-- A supplier is retired in the ERP: its CRM company is soft-deleted.
UPDATE erp.supplier SET is_deleted = true WHERE crm_company_id = 6;
-- A supplier created in the ERP appears in CRM with the sync user, the
-- default territory and Comp_Type = 'Supplier'.
-- Its phone, e-mail and city become Phone, Email and Address rows with their
-- link rows, and the address its primary address.
INSERT INTO erp.supplier (name, status, phone, email, city)
VALUES ('Nordlicht Büromöbel AG', 'A', '+47 22 00 00 00', 'kontakt@nordlicht.example.com', 'Oslo');
