"""django-q2's Redis broker, connected the project's way (Q_CLUSTER["broker_class"]).

django-q2 builds its connection with redis.StrictRedis(**Q_CLUSTER["redis"]), which knows
nothing of sentinels; this broker takes its connection from nextevent.redis.make_client, so
the clusters' BLPOP, the enqueue RPUSH and the stat keys follow REDIS_SENTINELS (a failover)
and REDIS_TLS exactly like the engine's own clients. The wire protocol is unchanged."""

from __future__ import annotations

from django_q.brokers.redis_broker import Redis


class ProjectRedisBroker(Redis):
    @staticmethod
    def get_connection(list_key: str = None):
        from nextevent.redis import make_client

        # A client of its own per broker, as django-q2 does: BLPOP holds a connection for up
        # to a second and must not wait behind other commands.
        return make_client()
