"""Queue jobs straight into the database for the engine tests (no service checks), and
read their rows back."""

from mlrig.db.models import TrainingExperiment


def add_job(
    platform,
    name="job",
    *,
    trainer="steps",
    priority=0,
    params=None,
    dataset=None,
    configuration=None,
    resources=None,
    max_attempts=3,
    early_stopping=None,
    interval=0,
    seed=7,
    queue=True,
):
    """Insert an experiment row (``created``) and, with ``queue``, queue it; its id."""
    config = dict(configuration or {})
    if dataset:
        config["dataset"] = dataset
    with platform.db.session() as session:
        job = TrainingExperiment(
            name=name,
            trainer=trainer,
            priority=priority,
            hyperparameters=params or {},
            configuration=config,
            resources=resources or {},
            max_attempts=max_attempts,
            early_stopping=early_stopping,
            checkpoint_interval_s=interval,
            seed=seed,
        )
        session.add(job)
        session.flush()
        events = platform.queue.record_created(session, job)
        job_id = job.id
    assert events[0]["new"] == "created"
    if queue:
        platform.queue.enqueue(job_id)
    return job_id


def job_row(platform, job_id):
    """The experiment's row as it is now."""
    with platform.db.session() as session:
        return session.get(TrainingExperiment, job_id)
