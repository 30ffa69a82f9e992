from django.db import migrations, models

from config.schema_ops import AddIndexConcurrently, RemoveIndexConcurrently


class Migration(migrations.Migration):
    # The client's index with the id after created_at, so that its list (newest first,
    # then by id) is read in the index's order: see Notification.Meta.indexes. The new
    # one is built before the old one is dropped, both concurrently on PostgreSQL, which
    # it can do only outside a transaction.
    atomic = False

    dependencies = [
        ('workflows', '0005_notification_created_index'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='notification',
            index=models.Index(
                fields=['client', 'created_at', 'id'], name='notification_client_created'
            ),
        ),
        RemoveIndexConcurrently(
            model_name='notification',
            name='workflows_n_client__c41e52_idx',
        ),
    ]
