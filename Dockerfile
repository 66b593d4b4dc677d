# syntax=docker/dockerfile:1
# Build stage: metacollector and its dependencies in a virtual environment.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY metacollector ./metacollector
RUN /opt/venv/bin/pip install --no-cache-dir --no-compile .

# Runtime stage: the venv only; nothing is executed through a shell; non-root.
FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 45000 8080 8081
ENTRYPOINT ["metacollector"]
CMD ["run"]
