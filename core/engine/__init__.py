"""The training engine: a job queue in the database, workers, the runner that executes a
job in its own process, and the training context trainers report through."""
