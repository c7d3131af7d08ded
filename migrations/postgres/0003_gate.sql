-- PostgreSQL twin of migrations/sqlite/0003_gate.sql.
ALTER TABLE analyses ADD COLUMN gate TEXT;
