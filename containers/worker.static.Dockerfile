# The worker from a static binary built on the host (scripts/lib/podman.sh
# build_images): no base image to pull, so it builds without any registry.
FROM scratch
COPY worker healthcheck /
ENV TEAM_NAME=rideshare-dbaas \
    DBAAS_DATA_DIR=/data
ENTRYPOINT ["/worker"]
