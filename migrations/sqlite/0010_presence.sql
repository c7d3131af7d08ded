-- What the model's rule for saying "No tumour" found for each analysis (JSON:
-- tumour_probability, min_no_tumour_probability, no_tumour_withheld). Older rows, and models
-- without the rule: NULL.
ALTER TABLE analyses ADD COLUMN presence TEXT;
