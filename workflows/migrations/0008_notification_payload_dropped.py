from django.db import migrations, models


class Migration(migrations.Migration):
    # The last of three releases: the column of the copies of a trigger's payload that
    # 0007 took out of the model is dropped. The release before 0008 maps it no more and
    # leaves it out of its INSERTs, so it runs on beside this one. The state has no field
    # to drop, so the database side first puts it back in a state of its own (the column
    # as 0007 left it), then drops it with Django's RemoveField, whose reverse adds it back
    # NOT NULL with 0007's default, {}, which the release before 0007 reads. On PostgreSQL
    # both ways are catalog changes, no table rewrite.
    dependencies = [
        ('workflows', '0007_notification_payload_unmapped'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.SeparateDatabaseAndState(
                    state_operations=[
                        migrations.AddField(
                            model_name='notification',
                            name='payload',
                            field=models.JSONField(blank=True, default=dict, db_default={}),
                        ),
                    ],
                ),
                migrations.RemoveField(model_name='notification', name='payload'),
            ],
        ),
    ]
