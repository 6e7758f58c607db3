# arcly-stream: one image for origins, edges and the operator.
#   docker build -t arcly-stream .        (make image)
#   docker run -p 1935:1935 -p 8080:8080 arcly-stream serve
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/arcly
COPY pyproject.toml README.md ./
COPY services ./services
RUN /opt/arcly/bin/pip install --no-cache-dir ".[operator]"

FROM node:20-slim AS players
WORKDIR /players
RUN npm pack --silent hls.js@1.7.4 mpegts.js@1.8.2 \
 && tar -xzf hls.js-1.7.4.tgz -O package/dist/hls.min.js > hls.min.js \
 && tar -xzf mpegts.js-1.8.2.tgz -O package/dist/mpegts.js > mpegts.js

FROM python:3.11-slim
ENV PATH=/opt/arcly/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app/operator
RUN apt-get update && apt-get install -y --no-install-recommends libsrt1.5-openssl && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 arcly \
 && useradd --system --uid 10001 --gid arcly --home-dir /app --shell /usr/sbin/nologin arcly
COPY --from=build /opt/arcly /opt/arcly
COPY --from=players /players/ /opt/arcly/lib/python3.11/site-packages/arcly/protocols/http/static/
COPY operator /app/operator
WORKDIR /app
USER 10001:10001
EXPOSE 1935 8080 7000
ENTRYPOINT ["arcly"]
CMD ["serve"]
