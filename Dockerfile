# detflow: one image for the API (gunicorn) and the workers (manage.py runworker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=detflow_site.settings \
    DJANGO_SQLITE_PATH=/app/var/django.sqlite3

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --create-home --uid 10001 detflow \
    && mkdir -p /app/var \
    && chown -R detflow:detflow /app/var
USER detflow

EXPOSE 8000
# DEBUG is off unless DJANGO_DEBUG=1, and the API does not start without a strong DJANGO_SECRET_KEY.
# Django's own tables (auth, sessions, tokens, admin login attempts) are created before it serves.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn detflow_site.wsgi:application --bind 0.0.0.0:8000 --workers 3 --threads 4"]
