# autoprompt_seg: `autoseg` in a container. Weights are mounted, never baked in:
#   docker build -t autoprompt_seg .
#   docker run --rm -v /data/study:/in:ro -v /data/out:/out -v /srv/weights:/weights \
#       autoprompt_seg predict /in -o /out/study1
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    AUTOSEG_WEIGHTS_DIR=/weights \
    AUTOSEG_CACHE_DIR=/cache

RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk=3.6.7-9~deb12u4 dicom3tools=1.00~20220618093127-2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/autoprompt_seg
COPY pyproject.toml README.md ./
COPY src ./src
COPY weights ./weights
# torch is pinned by the project; the default PyPI wheel carries CUDA for GPU hosts.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
 && pip install --no-cache-dir .

RUN useradd --create-home --uid 10001 autoseg \
 && mkdir -p /weights /cache /out /spool \
 && chown autoseg /cache /out /spool
USER 10001
VOLUME ["/weights", "/cache", "/spool"]
# `autoseg listen` (docs/deploy.md): a DICOM node on 11112, checked by C-ECHO
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=10s CMD ["echoscu", "-to", "5", "-aec", "AUTOSEG", "127.0.0.1", "11112"]
ENTRYPOINT ["autoseg"]
CMD ["listen", "--spool", "/spool", "--port", "11112"]
