# The Cairn worker image used by docker-compose.yml (needs a registry for the base image).
FROM python:3.11-slim
WORKDIR /app
# PDF export draws text with Pango and embeds the fonts it finds.
RUN apt-get update && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core && rm -rf /var/lib/apt/lists/*
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . && useradd --uid 10001 --create-home cairn && mkdir -p /data && chown cairn /data
USER cairn
CMD ["python", "worker.py"]
