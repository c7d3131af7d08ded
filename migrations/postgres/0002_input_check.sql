-- PostgreSQL twin of migrations/sqlite/0002_input_check.sql.
ALTER TABLE analyses ADD COLUMN verdict TEXT NOT NULL DEFAULT 'answer'
    CHECK (verdict IN ('answer', 'uncertain', 'not_brain_mri'));
ALTER TABLE analyses ADD COLUMN input_reasons TEXT NOT NULL DEFAULT '[]';
UPDATE analyses SET verdict = 'uncertain' WHERE uncertain = 1;
