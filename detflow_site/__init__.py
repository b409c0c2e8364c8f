"""The Django project: settings, URLs, embedded services and the admin glue."""
