# One image for the web server, the Celery worker and Celery beat.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

RUN useradd --create-home --uid 1000 portal
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=portal:portal . .
# var/metrics: the mount point of docker-compose's metrics volume, which takes its owner from here.
RUN mkdir -p var/metrics && chown portal:portal var var/metrics \
 && DJANGO_SECRET_KEY=build-only DAYTONA_API_KEY=build-only python manage.py collectstatic --no-input

USER portal
EXPOSE 8000
# The web server (bin/serve): forwarding headers are believed only from TRUSTED_PROXIES.
ENV HOST=0.0.0.0 PORT=8000
CMD ["bin/serve"]
