-- Scans and heat-maps of new analyses live in the object store (a folder or an S3 bucket),
-- under this prefix; NULL: the analysis predates the object store and keeps them in its
-- image_png, heatmap_png and source_png columns, as before.
ALTER TABLE analyses ADD COLUMN object_prefix TEXT;
