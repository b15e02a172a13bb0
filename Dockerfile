# One image for web, workers and beat (docker-compose.yml). On a GPU host the torch wheel that pip
# picks for 2.13.0 carries CUDA; the gpu-worker service reserves the device.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir "$(grep -E '^torch==' requirements.txt)" \
 && pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
COPY . .
RUN useradd --create-home app && mkdir -p /artifacts /var/lib/rlhf && chown app /artifacts /var/lib/rlhf
USER app
EXPOSE 8000
