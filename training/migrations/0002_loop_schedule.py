"""Creates the beat schedule of the training loop: a periodic task an admin can retime or switch
off in the Django admin (Periodic tasks), without a deploy."""

from __future__ import annotations

from django.db import migrations

TASK_NAME = "training loop"


def forwards(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={"task": "training.tasks.loop_tick", "interval": every_minute, "queue": "celery"},
    )


def backwards(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
