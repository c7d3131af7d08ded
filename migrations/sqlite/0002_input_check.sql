-- The input check and selective prediction: what the answer was ('answer', 'uncertain' or
-- 'not_brain_mri') and, for the last, why (JSON array of sentences). Older rows predate the
-- check: their verdict follows from the stored uncertain flag.
ALTER TABLE analyses ADD COLUMN verdict TEXT NOT NULL DEFAULT 'answer'
    CHECK (verdict IN ('answer', 'uncertain', 'not_brain_mri'));
ALTER TABLE analyses ADD COLUMN input_reasons TEXT NOT NULL DEFAULT '[]';
UPDATE analyses SET verdict = 'uncertain' WHERE uncertain = 1;
