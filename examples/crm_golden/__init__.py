"""Golden tests for the CRM example, generated from its recorded traffic (contractspec-testing)."""
