from django.db import migrations

from config.schema_ops import foreign_key_checked_per_statement

# A message's subscriber is checked (and locked) when its INSERT ends, before its step
# at commit: in the order a subscriber's delete locks them. See Message.subscriber.


class Migration(migrations.Migration):

    dependencies = [
        ('messaging', '0003_foreign_keys_indexed_by_a_composite'),
    ]

    operations = [
        foreign_key_checked_per_statement('messaging', 'message', 'subscriber'),
    ]
