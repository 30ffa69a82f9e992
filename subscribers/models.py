from __future__ import annotations

from django.db import models
from django.db.models.functions import Now, Upper


class Subscriber(models.Model):
    # Indexed by the unique (client, subscriber_id), which starts with it.
    client = models.ForeignKey(
        "notify.Client", on_delete=models.CASCADE, related_name="subscribers", db_index=False
    )
    subscriber_id = models.CharField(max_length=255)
    email = models.CharField(max_length=254, blank=True)
    phone = models.CharField(max_length=64, blank=True)
    first_name = models.CharField(max_length=200, blank=True)
    last_name = models.CharField(max_length=200, blank=True)
    avatar = models.CharField(max_length=500, blank=True)
    locale = models.CharField(max_length=32, blank=True)
    timezone = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    # Novu's online flag, which its clients set (PATCH /v1/subscribers/{id}/online-status):
    # norm only keeps it, and when the subscriber last went offline.
    is_online = models.BooleanField(default=False, db_default=False)
    last_online_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "subscriber_id"], name="uniq_subscriber")
        ]
        indexes = [
            # `email__iexact` (GET /v1/notifications?emails=, the subscriber search by
            # email) is UPPER(email) = UPPER(%s) on PostgreSQL, which no plain index serves:
            # without it each call scanned every subscriber, or walked all the client's
            # notifications newest first looking for the subscriber's. The email first: the
            # notification list's join reaches it by email with or without the client.
            # (SQLite compares with NORM_UPPER, config/db.py, which this does not serve.)
            models.Index(Upper("email"), "client", name="subscriber_upper_email"),
            # GET /v2/subscribers?orderBy=updatedAt pages by (updated_at, id) within the
            # client: without it each page sorted all the client's subscribers (45 ms
            # at 200,000), with it a page reads its rows from the cursor on.
            models.Index(fields=["client", "updated_at", "id"], name="subscriber_client_updated"),
        ]

    def __str__(self) -> str:
        return self.subscriber_id


class Topic(models.Model):
    # Indexed by the unique (client, key), which starts with it.
    client = models.ForeignKey(
        "notify.Client", on_delete=models.CASCADE, related_name="topics", db_index=False
    )
    key = models.CharField(max_length=255)
    name = models.CharField(max_length=255, blank=True)
    subscribers = models.ManyToManyField(
        Subscriber, through="TopicSubscription", related_name="topics"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Its default in the database too: the release before this column inserts topics
    # without it while the upgrade migrates.
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        constraints = [models.UniqueConstraint(fields=["client", "key"], name="uniq_topic")]

    def __str__(self) -> str:
        return self.key


def default_subscription_identifier(key: str, subscriber_id: str) -> str:
    """Novu's identifier of a subscription made without one of its own."""
    return f"tk_{key}:si_{subscriber_id}"


class TopicSubscription(models.Model):
    # Indexed by the unique (topic, subscriber), which starts with it.
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, db_index=False)
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)
    # Novu's `identifier` and `name` of the subscription, as its subscribe gave them;
    # "" when it gave none: the identifier is then default_subscription_identifier's.
    # Their default in the database too: the release before these columns inserts
    # subscriptions without them while the upgrade migrates.
    identifier = models.CharField(max_length=255, blank=True, default="", db_default="")
    name = models.CharField(max_length=255, blank=True, default="", db_default="")
    # When it last changed (its name, by a PATCH): Novu's updatedAt of it. Null until then,
    # its updatedAt its created_at. Null rather than a database default: PostgreSQL gives
    # every row there is the default's value as of the migration (their updatedAt the
    # hour of the upgrade), and setting them back is a rewrite of the table; null is true
    # of them, and of those the release before this column inserts while it migrates.
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "subscriber"], name="uniq_topic_subscription")
        ]
        indexes = [
            # GET /v2/topics/{key}/subscriptions pages a topic by (subscribed_at, subscriber)
            # (SUBSCRIPTION_ORDER_BY): without it each page sorted all the topic's members
            # (35 to 60 ms at 50,000), with it a page reads its rows from the cursor on.
            models.Index(
                fields=["topic", "created_at", "subscriber"], name="topic_subscription_created"
            ),
            # A subscription named by the identifier it was given (GET, PATCH, an
            # unsubscribe): without it each read all the topic's members (50,000) for
            # it. Only those given one: the others are found by their subscriberId.
            models.Index(
                fields=["topic", "identifier"],
                name="topic_subscription_identifier",
                condition=~models.Q(identifier=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subscriber_id} in {self.topic_id}"
