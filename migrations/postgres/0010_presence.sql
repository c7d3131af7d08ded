-- PostgreSQL twin of migrations/sqlite/0010_presence.sql.
ALTER TABLE analyses ADD COLUMN presence TEXT;
