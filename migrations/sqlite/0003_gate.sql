-- The input gate's finding for each analysis (JSON: score, threshold, looks_like,
-- looks_like_probability, refused). Older rows predate the gate: NULL.
ALTER TABLE analyses ADD COLUMN gate TEXT;
