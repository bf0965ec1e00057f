"""The job ledger: the database is the source of truth for every job's life; Redis only
carries wake-ups ("run job 42") to the queue's django-q2 cluster."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy


class JobState(models.TextChoices):
    SCHEDULED = "scheduled", pgettext_lazy("job state", "Scheduled")  # waiting for run_at
    PENDING = "pending", pgettext_lazy("job state", "Pending")  # pushed to its queue in Redis
    ACTIVE = "active", pgettext_lazy("job state", "Active")  # claimed by a worker, holding a lease
    RETRY = "retry", pgettext_lazy("job state", "Retry")  # failed, waiting for its backoff (run_at)
    DEAD = "dead", pgettext_lazy("job state", "Dead")  # out of retries or permanently failed
    COMPLETED = "completed", pgettext_lazy("job state", "Completed")
    CANCELLED = "cancelled", pgettext_lazy("job state", "Cancelled")
    EXPIRED = "expired", pgettext_lazy("job state", "Expired")  # not started by its deadline (expires_at); never ran


LIVE_STATES = (JobState.SCHEDULED, JobState.PENDING, JobState.ACTIVE, JobState.RETRY)
FINISHED_STATES = (JobState.DEAD, JobState.COMPLETED, JobState.CANCELLED, JobState.EXPIRED)
# What people may do to a job (admin actions, `manage.py jobs`): one home for both.
# Cancel reaches running jobs too: an active one is asked to stop (jobs/services/cancelling.py).
CANCELLABLE_STATES = (JobState.SCHEDULED, JobState.PENDING, JobState.RETRY, JobState.ACTIVE)
RETRYABLE_STATES = (JobState.DEAD, JobState.RETRY)
# "Run now": a job waiting for its run_at (scheduled, or retry waiting for its backoff).
RUN_NOW_STATES = (JobState.SCHEDULED, JobState.RETRY)


class Job(models.Model):
    job_type = models.CharField(verbose_name=_("job type"), max_length=64, db_index=True)
    queue = models.CharField(verbose_name=_("queue"), max_length=32)
    payload = models.JSONField(verbose_name=_("payload"), default=dict)
    state = models.CharField(verbose_name=_("state"), max_length=16, choices=JobState.choices)
    attempts = models.PositiveIntegerField(verbose_name=_("attempts"), default=0,
                                           help_text=_("Attempts started so far"))
    # The fence: +1 on every claim and never reset (attempts is, by "Retry now", and goes back
    # one on a snooze), so a worker whose lease was taken over can never move the job again.
    claims = models.PositiveBigIntegerField(verbose_name=_("claims"), default=0,
                                            help_text=_("Claims so far, never reset (fences stale workers)"))
    max_retries = models.PositiveSmallIntegerField(verbose_name=_("max retries"), default=3)
    timeout = models.PositiveIntegerField(verbose_name=_("timeout"), help_text=_("Seconds an attempt may run"))
    run_at = models.DateTimeField(verbose_name=_("run at"), help_text=_("Not before this moment"))
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    dispatched_at = models.DateTimeField(verbose_name=_("dispatched at"), null=True, blank=True,
                                         help_text=_("Last push to Redis"))
    started_at = models.DateTimeField(verbose_name=_("started at"), null=True, blank=True,
                                      help_text=_("Start of the last attempt"))
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)
    lease_expires_at = models.DateTimeField(verbose_name=_("lease expires at"), null=True, blank=True)
    worker = models.CharField(verbose_name=_("worker"), max_length=128, blank=True,
                              help_text=_("host:pid of the last attempt"))
    unique_key = models.CharField(verbose_name=_("unique key"), max_length=191, null=True, blank=True)
    # Equals unique_key while the job is live and NULL afterwards; the unique index on it is
    # "at most one live job per key" (MySQL has no partial unique indexes).
    live_key = models.CharField(verbose_name=_("live key"), max_length=191, null=True, blank=True, unique=True)
    # What the job is about, for people and searches: "news:42", "schedule:cleanup". Set
    # from the job type's `subject` template; the engine does not interpret it.
    subject = models.CharField(verbose_name=_("subject"), max_length=64, blank=True, default="", db_index=True)
    last_error = models.TextField(verbose_name=_("last error"), blank=True,
                                  help_text=_("The last failed attempt's error; errors only"))
    waiting_reason = models.TextField(verbose_name=_("waiting reason"), blank=True,
                                      help_text=_("Why a healthy job is waiting (snoozed), not an error"))
    errors = models.JSONField(verbose_name=_("errors"), default=list, blank=True,
                              help_text=_("One entry per failed attempt"))
    result = models.TextField(verbose_name=_("result"), blank=True)
    # Job controls (jobs/services/cancelling.py, jobs/services/people.py). Nullable or
    # defaulted columns: MariaDB adds them instantly, without rebuilding the ledger.
    priority = models.SmallIntegerField(default=0, verbose_name=_("priority"),
                                        help_text=_("-100 to 100, higher first within a queue"))
    expires_at = models.DateTimeField(null=True, blank=True, verbose_name=_("expires at"),
                                      help_text=_("Not started by then: expired, never run"))
    cancel_requested_at = models.DateTimeField(null=True, blank=True, verbose_name=_("cancel requested at"))
    cancelled_at = models.DateTimeField(null=True, blank=True, verbose_name=_("cancelled at"))
    cancelled_by = models.CharField(max_length=150, blank=True, default="", verbose_name=_("cancelled by"))
    run_now_at = models.DateTimeField(null=True, blank=True, verbose_name=_("run now requested at"))
    run_now_by = models.CharField(max_length=150, blank=True, default="", verbose_name=_("run now requested by"))

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        ordering = ["-id"]
        permissions = [
            ("cancel_job", _("Can cancel jobs, running ones included")),
            ("run_job_now", _("Can run jobs and periodic tasks now")),
        ]
        indexes = [
            # Dispatcher: due scheduled/retry jobs, oldest first.
            models.Index(fields=["state", "run_at"], name="job_state_run_at_idx"),
            # Reaper: active jobs whose lease ran out.
            models.Index(fields=["state", "lease_expires_at"], name="job_state_lease_idx"),
            # Re-push of lost wake-ups, stats per queue.
            models.Index(fields=["queue", "state", "dispatched_at"], name="job_queue_state_idx"),
            # Cleanup, history and the per-minute roll-up (jobs/monitoring/rollup.py).
            models.Index(fields=["state", "finished_at"], name="job_state_finished_idx"),
            # The admin's change list filtered by state or queue, newest first: an index
            # walk that stops after a page instead of sorting every matching row.
            models.Index(fields=["state", "id"], name="job_state_id_idx"),
            models.Index(fields=["queue", "id"], name="job_queue_id_idx"),
            # The dispatcher's deadline sweep: waiting jobs past expires_at.
            models.Index(fields=["state", "expires_at"], name="job_state_expires_idx"),
            # The claim's priority probe (jobs/services/running.py: _PRIORITY_TARGET): the best
            # pending job of a queue, read from the index's first row.
            models.Index(fields=["queue", "state", "-priority", "run_at", "id"], name="job_priority_idx"),
        ]

    def __str__(self):
        return gettext("job %(id)s %(type)s [%(state)s]") % {
            "id": self.pk, "type": self.job_type, "state": self.get_state_display()}

    def cancel_requested(self) -> bool:
        """For a handler that runs long: has someone asked this attempt to stop? Return
        soon if so (the engine records the job cancelled). No query: the worker's lease
        keeper polls the ledger every JOBS_CANCEL_POLL_SECONDS (jobs/worker.py)."""
        from jobs import cancelflags

        return cancelflags.seen(self.pk, self.claims)


class QueuePause(models.Model):
    """A paused queue: the dispatcher does not forward its jobs and workers put back what
    they pick up. Nothing is dropped; resuming lets them run."""

    queue = models.CharField(verbose_name=_("queue"), max_length=32, unique=True)
    paused_at = models.DateTimeField(verbose_name=_("paused at"), auto_now_add=True)
    paused_by = models.CharField(verbose_name=_("paused by"), max_length=150, blank=True)

    class Meta:
        verbose_name = _("queue pause")
        verbose_name_plural = _("queue pauses")

    def __str__(self):
        return gettext("%(queue)s paused") % {"queue": self.queue}


class Heartbeat(models.Model):
    """Last-seen records: dispatchers, clusters and the 30-second health check write here."""

    name = models.CharField(verbose_name=_("name"), max_length=191, unique=True)
    kind = models.CharField(verbose_name=_("kind"), max_length=32)
    seen_at = models.DateTimeField(verbose_name=_("seen at"))
    details = models.JSONField(verbose_name=_("details"), default=dict, blank=True)

    class Meta:
        verbose_name = _("heartbeat")
        verbose_name_plural = _("heartbeats")

    def __str__(self):
        return f"{self.name} @ {self.seen_at}"


class JobStat(models.Model):
    """Jobs that finished (completed or dead) in one minute, by queue, type and final state:
    the per-minute roll-up that history, "today", "last hour" and /metrics read instead of
    the ledger (jobs/monitoring/rollup.py writes it; a minute is written once, when closed).
    The histogram columns are cumulative counts per bound of jobs/monitoring/metrics.py's
    DURATION_BUCKETS and LATENESS_BUCKETS, over the jobs with a started_at (`timed`)."""

    minute = models.DateTimeField(verbose_name=_("minute"), help_text=_("Start of the minute the jobs finished in"))
    queue = models.CharField(verbose_name=_("queue"), max_length=32)
    job_type = models.CharField(verbose_name=_("job type"), max_length=64)
    state = models.CharField(verbose_name=_("state"), max_length=16, choices=JobState.choices)
    count = models.PositiveIntegerField(verbose_name=_("count"), default=0)
    timed = models.PositiveIntegerField(verbose_name=_("timed"), default=0,
                                        help_text=_("Of which started (duration and lateness known)"))
    duration_sum = models.FloatField(verbose_name=_("duration sum"), default=0.0)
    lateness_sum = models.FloatField(verbose_name=_("lateness sum"), default=0.0)
    duration_buckets = models.JSONField(verbose_name=_("duration buckets"), default=list, blank=True)
    lateness_buckets = models.JSONField(verbose_name=_("lateness buckets"), default=list, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["minute", "queue", "job_type", "state"],
                                               name="jobstat_minute_key")]

    def __str__(self):
        return f"{self.minute:%Y-%m-%d %H:%M} {self.queue} {self.job_type} {self.state}: {self.count}"


class JobStatMark(models.Model):
    """How far the roll-up has gone: every job finished before `through` is in JobStat, and
    nothing at or after it. One row; passes lock it, so two never count a minute twice."""

    name = models.CharField(verbose_name=_("name"), max_length=32, unique=True)
    through = models.DateTimeField(verbose_name=_("through"))
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)

    def __str__(self):
        return f"{self.name} through {self.through}"
