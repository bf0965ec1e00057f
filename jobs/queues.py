"""The queues and their default worker counts: the one home of the queue list.

The seed's Asynq weights (critical 6, news 3, wechat 2, analytics 1, default 1) become the
number of worker processes each queue's django-q2 cluster gets (settings: JOBS_WORKERS_<QUEUE>).
Plain Python, no Django: settings.py reads it too."""

DEFAULT_WORKERS = {"critical": 6, "news": 3, "wechat": 2, "analytics": 1, "default": 1}
QUEUES = tuple(DEFAULT_WORKERS)


def check_queue(queue: str) -> str:
    if queue not in QUEUES:
        raise ValueError(f"queue: unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    return queue
