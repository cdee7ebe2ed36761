"""The weekly pipeline: the offline stages as one versioned, resumable run per week, locally or
as an Airflow DAG (see `revision.pipeline.stages`)."""
