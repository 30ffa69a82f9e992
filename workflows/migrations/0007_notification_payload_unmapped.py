from django.db import migrations, models


class Migration(migrations.Migration):
    # Notification.payload leaves the model (see its comment there), and the column stays
    # for the release before, which still reads it while a deploy rolls, with a database
    # default, {}, for this release's INSERTs, which leave it out. On PostgreSQL a
    # catalog change (no table rewrite); the next release drops the column.
    dependencies = [
        ('workflows', '0006_notification_client_created_index'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveField(model_name='notification', name='payload')],
            database_operations=[
                migrations.AlterField(
                    model_name='notification',
                    name='payload',
                    field=models.JSONField(blank=True, default=dict, db_default={}),
                ),
            ],
        ),
    ]
